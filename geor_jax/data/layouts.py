"""On-disk layouts of geotagged photo collections: which CSV, which columns, where the images are.

Each layout names the metadata CSVs a download ships, the columns holding the
image id, latitude and longitude (matched case-insensitively, with aliases),
the place columns the dataset carries itself (kept verbatim in the records'
``source_place``), the folders its images are unpacked into, and the archives
(tar or zip, or a tar split into chunks) they can be read from in place
(``archives.ImageLocator``). ``with_columns`` maps other column names onto a
layout (the CLI's ``--id_column`` etc.). ``check_header`` checks a CSV's
header against the layout's needed columns (``Layout.needs``) before
anything is built; ``read_rows`` streams the CSV into ``RawRow``s (a row with
bytes that are not UTF-8 comes back flagged, not as an error). CSVs are
comma-separated UTF-8 (a BOM is allowed).

Known layouts (header lines as the public files have them):

- ``generic``: ``image_path,lat,lon`` (aliases: image/path/filename/file,
  latitude, lng/longitude; an optional ``id`` column), images relative to the
  CSV's folder or ``--image_dir``.
- ``mp16_pro``: ``MP16_Pro_filtered.csv`` / ``MP16_Pro_places365.csv`` (also
  under ``metadata/``), ``IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,
  Prob_indoor,Prob_natural,Prob_urban,neighbourhood,city,county,state,region,
  country,country_code,continent``; ``IMG_ID`` is a relative path such as
  ``12/ab/123456789.jpg``, found as is or with ``/`` replaced by ``_``. Images:
  the tar split into 19 chunks ``mp-16-images00`` .. ``mp-16-images18`` (or
  the joined ``mp-16-images.tar``), indexed by ``metadata/tar_index.pkl`` when
  shipped; about 11% of the rows have no image, hence ``max_missing_fraction``
  0.15.
- ``im2gps3k``: ``im2gps3k_places365.csv``, ``IMG_ID,AUTHOR,LAT,LON,S3_Label,
  S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban``; IMG_ID is the
  file name in ``im2gps3k_rgb_images/`` (or ``images/``), or in the zip
  ``im2gps3ktest.zip``.
- ``yfcc4k``: ``yfcc4k_places365.csv`` or ``yfcc25600_places365.csv``, same
  columns as IM2GPS3K; images in ``yfcc4k_rgb_images/``, ``yfcc4k/`` or
  ``images/``, or in the zip ``yfcc4k.zip``.
- ``yfcc26k``: ``yfcc25600_places365.csv`` (YFCC-Val26k, 25,600 rows), same
  columns; images in ``yfcc25600/``, ``yfcc26k/`` or ``images/``, or a zip or
  tar of that name.
- ``geoclip``: GeoCLIP's training CSV, ``IMG_FILE,LAT,LON``; images relative
  to the CSV's folder (or ``--image_dir``).
"""

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence

_PLACES365 = ("S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural", "Prob_urban")
_OTHER_DELIMITERS = (";", "\t", "|")


class LayoutError(ValueError):
    """A collection does not fit its layout: no metadata CSV, or a header without the columns it needs."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a collection keeps ids, coordinates, images and its own place names."""

    name: str
    csv_names: tuple[str, ...]
    id_columns: tuple[str, ...]
    image_columns: tuple[str, ...]
    lat_columns: tuple[str, ...]
    lon_columns: tuple[str, ...]
    image_dirs: tuple[str, ...]
    place_columns: tuple[str, ...] = ()
    split: str = "train"
    archives: tuple[str, ...] = ()  # globs (relative to manual_dir) of tar/zip files holding images
    chunks: tuple[str, ...] = ()  # globs whose sorted matches are the byte chunks of one tar
    shipped_indexes: tuple[str, ...] = ()  # a tar index the download ships (read instead of scanning the tar)
    max_missing_fraction: float = 0.01  # rows without an image the build tolerates (see mp16_pro)

    def needs(self) -> dict[str, tuple[str, ...]]:
        """The columns a header must have: role -> accepted names (case-insensitive, first present wins)."""
        return {"image": self.image_columns, "lat": self.lat_columns, "lon": self.lon_columns}

    def describe(self) -> str:
        """One phrase naming the needed columns, e.g. ``mp16_pro needs image (IMG_ID), lat (LAT), lon (LON)``."""
        return f"{self.name} needs " + ", ".join(f"{role} ({'|'.join(names)})" for role, names in self.needs().items())


_PLACES365_COLUMNS = dict(id_columns=("IMG_ID",), image_columns=("IMG_ID",), lat_columns=("LAT",),
                          lon_columns=("LON",), place_columns=_PLACES365, split="test")

LAYOUTS: dict[str, Layout] = {
    "generic": Layout(
        name="generic",
        csv_names=("images.csv", "metadata.csv"),
        id_columns=("id", "image_id", "img_id", "image_path", "image", "path", "filename", "file"),
        image_columns=("image_path", "image", "path", "filename", "file", "img_id", "image_id"),
        lat_columns=("lat", "latitude"),
        lon_columns=("lon", "lng", "long", "longitude"),
        image_dirs=("",),
    ),
    "mp16_pro": Layout(
        name="mp16_pro",
        csv_names=("MP16_Pro_filtered.csv", "MP16_Pro_places365.csv", "metadata/MP16_Pro_filtered.csv",
                   "metadata/MP16_Pro_places365.csv"),
        id_columns=("IMG_ID",),
        image_columns=("IMG_ID",),
        lat_columns=("LAT",),
        lon_columns=("LON",),
        image_dirs=("mp-16-images", "images", ""),
        place_columns=("neighbourhood", "city", "county", "state", "region", "country", "country_code",
                       "continent"),
        archives=("mp-16-images.tar",),
        chunks=("mp-16-images[0-9][0-9]",),
        shipped_indexes=("metadata/tar_index.pkl", "tar_index.pkl"),
        # ~4.65M rows, ~4.12M images in the tars: about 11% of the rows have no image.
        max_missing_fraction=0.15,
    ),
    "im2gps3k": Layout(
        name="im2gps3k",
        csv_names=("im2gps3k_places365.csv",),
        image_dirs=("im2gps3k_rgb_images", "images", "im2gps3k", "im2gps3ktest", ""),
        archives=("im2gps3ktest.zip", "im2gps3k.zip"),
        **_PLACES365_COLUMNS,
    ),
    "yfcc4k": Layout(
        name="yfcc4k",
        csv_names=("yfcc4k_places365.csv", "yfcc25600_places365.csv"),
        image_dirs=("yfcc4k_rgb_images", "yfcc4k", "images", ""),
        archives=("yfcc4k.zip",),
        **_PLACES365_COLUMNS,
    ),
    "yfcc26k": Layout(
        name="yfcc26k",
        csv_names=("yfcc25600_places365.csv",),
        image_dirs=("yfcc25600", "yfcc26k", "images", ""),
        archives=("yfcc25600.zip", "yfcc26k.zip", "yfcc25600.tar", "yfcc26k.tar"),
        **_PLACES365_COLUMNS,
    ),
    "geoclip": Layout(
        name="geoclip",
        csv_names=("images.csv", "train.csv", "metadata.csv"),
        id_columns=("IMG_FILE",),
        image_columns=("IMG_FILE",),
        lat_columns=("LAT",),
        lon_columns=("LON",),
        image_dirs=("images", ""),
    ),
}


def with_columns(layout: Layout, *, id_column: str | None = None, image_column: str | None = None,
                 lat_column: str | None = None, lon_column: str | None = None,
                 place_columns: Sequence[str] | None = None) -> Layout:
    """``layout`` reading the named columns instead (each None keeps the layout's own)."""
    changes = {field: (name,) for field, name in [("id_columns", id_column), ("image_columns", image_column),
                                                  ("lat_columns", lat_column), ("lon_columns", lon_column)] if name}
    if image_column and not id_column:
        changes["id_columns"] = (image_column,)
    if place_columns is not None:
        changes["place_columns"] = tuple(place_columns)
    return dataclasses.replace(layout, **changes)


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One CSV row before validation: texts exactly as in the file."""

    row_number: int  # 1-based data row (the header is row 0)
    id: str
    image_ref: str
    lat_text: str
    lon_text: str
    place: dict[str, str]
    undecodable: str = ""  # why the row is not UTF-8 (its texts then show bad bytes as \xNN); "" if it is


@dataclasses.dataclass(frozen=True)
class Columns:
    """Where a header keeps each role: column indices, and the layout's place columns it has."""

    id: int
    image: int
    lat: int
    lon: int
    places: tuple[tuple[str, int], ...]


def get_layout(name: str) -> Layout:
    """The layout called ``name`` (error lists the known ones)."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known: {sorted(LAYOUTS)}")
    return LAYOUTS[name]


def find_csv(layout: Layout, manual_dir: str, csv_path: str | None = None) -> str:
    """The metadata CSV: ``csv_path`` if given, else the layout's usual names in ``manual_dir``."""
    if csv_path:
        path = csv_path if os.path.isabs(csv_path) else os.path.join(manual_dir, csv_path)
        if not os.path.isfile(path):
            raise LayoutError(f"metadata CSV {path} not found")
        return path
    for name in layout.csv_names:
        path = os.path.join(manual_dir, name)
        if os.path.isfile(path):
            return path
    raise LayoutError(
        f"no {layout.name} metadata CSV in {manual_dir}: looked for {list(layout.csv_names)}; "
        f"pass csv_path to name it")


def _find(header: Sequence[str], names: Sequence[str]) -> int | None:
    """Index of the header column matching one of ``names`` (case-insensitive, first name wins)."""
    lowered: dict[str, int] = {}
    for i, column in enumerate(header):
        lowered.setdefault(column.strip().lower(), i)
    return next((lowered[n.lower()] for n in names if n.lower() in lowered), None)


def match_header(header: Sequence[str], layout: Layout) -> Columns | None:
    """The columns of ``layout``'s roles in ``header``, or None if a needed one is missing."""
    found = {role: _find(header, names) for role, names in layout.needs().items()}
    if None in found.values():
        return None
    id_column = _find(header, layout.id_columns)
    index = {column: i for i, column in reversed(list(enumerate(header)))}
    places = tuple((column, index[column]) for column in layout.place_columns if column in index)
    return Columns(found["image"] if id_column is None else id_column, found["image"], found["lat"], found["lon"],
                   places)


def header_error(path: str, header: Sequence[str] | None, layout: Layout) -> str:
    """One line: the columns found, what ``layout`` misses, which layouts would fit, what each layout needs."""
    expected = "; ".join(other.describe() for other in LAYOUTS.values())
    if not header or not any(column.strip() for column in header):
        return f"{path}: no header line (the file is empty or starts blank); expected: {expected}"
    missing = [role for role, names in layout.needs().items() if _find(header, names) is None]
    hint = next((f" (it looks {d!r}-separated; the CSV must be comma-separated)"
                 for d in _OTHER_DELIMITERS if len(header) == 1 and d in header[0]), "")
    fits = [other.name for other in LAYOUTS.values() if match_header(header, other) is not None]
    fitting = f"it fits layout(s) {fits}" if fits else "it fits no layout"
    shown = [_shown(column) for column in header]
    return (f"{path}: header {shown!r} does not fit layout {layout.name}: missing {', '.join(missing)}{hint}; "
            f"{fitting}; expected: {expected}")


def _open(path: str):
    """The CSV as text; bytes that are not UTF-8 become lone surrogates (flagged per row, never fatal)."""
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def check_header(path: str, layout: Layout) -> Columns:
    """Read only the header of ``path`` and return ``layout``'s columns; ``LayoutError`` (one line) if it misses any."""
    with _open(path) as f:
        header = next(csv.reader(f), None)
    columns = match_header(header, layout) if header else None
    if columns is None:
        raise LayoutError(header_error(path, header, layout))
    return columns


def _undecodable(row: Sequence[str], header: Sequence[str]) -> str:
    """Which cell of ``row`` (read with surrogateescape, see ``_open``) holds the first byte that is not UTF-8."""
    for i, cell in enumerate(row):
        bad = next((ch for ch in cell if "\udc80" <= ch <= "\udcff"), None)
        if bad is not None:
            name = _shown(header[i]) if i < len(header) else f"#{i + 1}"
            return f"byte 0x{ord(bad) - 0xDC00:02x} in column {name!r} is not UTF-8"
    return "text is not UTF-8"


def _shown(cell: str) -> str:
    """A cell with its undecodable bytes written as \\xNN (readable, JSON-safe)."""
    return cell.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def read_rows(path: str, layout: Layout) -> Iterator[RawRow]:
    """Stream a layout's CSV as ``RawRow``s (missing cells become empty strings).

    Raises ``LayoutError`` if the header misses a needed column (see
    ``check_header``). A row with bytes that are not UTF-8 is yielded with
    ``undecodable`` set, so the caller can skip and count it.
    """
    with _open(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        columns = match_header(header, layout) if header else None
        if columns is None:
            raise LayoutError(header_error(path, header, layout))

        def cell(row, i):
            """The stripped cell ``i`` ('' past a short row's end)."""
            return row[i].strip() if i < len(row) else ""

        for number, row in enumerate(reader, start=1):
            if not any(c.strip() for c in row):
                continue
            undecodable = ""
            try:
                "".join(row).encode("utf-8")  # fast path: lone surrogates (bad bytes) fail to encode
            except UnicodeEncodeError:
                undecodable = _undecodable(row, header)
                row = [_shown(c) for c in row]
            yield RawRow(
                row_number=number,
                id=cell(row, columns.id),
                image_ref=cell(row, columns.image),
                lat_text=cell(row, columns.lat),
                lon_text=cell(row, columns.lon),
                place={column: cell(row, i) for column, i in columns.places if cell(row, i)},
                undecodable=undecodable,
            )
