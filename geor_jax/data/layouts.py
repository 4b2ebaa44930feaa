"""On-disk layouts of geotagged photo collections: which CSV, which columns, where the images are.

Each layout names the metadata CSV a download ships, the columns holding the
image id, latitude and longitude (matched case-insensitively, with aliases),
the place columns the dataset carries itself (kept verbatim in the records'
``source_place``), and the folders its images are usually unpacked into.
``read_rows`` streams a CSV into ``RawRow``s; ``ImageLocator`` finds an image
file for a row's image reference.

Known layouts (header lines as the public files have them):

- ``generic``: ``image_path,lat,lon`` (aliases: image/path/filename/file,
  latitude, lng/longitude; an optional ``id`` column), images relative to the
  CSV's folder or ``--image_dir``.
- ``mp16_pro``: ``MP16_Pro_places365.csv`` / ``MP16_Pro_filtered.csv``,
  ``IMG_ID,AUTHOR,LAT,LON,S3_Label,S16_Label,S365_Label,Prob_indoor,
  Prob_natural,Prob_urban,neighbourhood,city,county,state,region,country,
  country_code,continent``; ``IMG_ID`` is a relative path such as
  ``12/ab/123456789.jpg``, found as is or with ``/`` replaced by ``_``.
- ``im2gps3k``: ``im2gps3k_places365.csv``, ``IMG_ID,AUTHOR,LAT,LON,S3_Label,
  S16_Label,S365_Label,Prob_indoor,Prob_natural,Prob_urban``; IMG_ID is the
  file name in ``im2gps3k_rgb_images/`` (or ``images/``).
- ``yfcc4k``: ``yfcc4k_places365.csv``, same columns as IM2GPS3K; images in
  ``yfcc4k_rgb_images/``, ``yfcc4k/`` or ``images/``.
"""

import csv
import dataclasses
import os
from collections.abc import Iterator, Sequence

_PLACES365 = ("S3_Label", "S16_Label", "S365_Label", "Prob_indoor", "Prob_natural", "Prob_urban")


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
    ),
    "im2gps3k": Layout(
        name="im2gps3k",
        csv_names=("im2gps3k_places365.csv",),
        id_columns=("IMG_ID",),
        image_columns=("IMG_ID",),
        lat_columns=("LAT",),
        lon_columns=("LON",),
        image_dirs=("im2gps3k_rgb_images", "images", "im2gps3k", ""),
        place_columns=_PLACES365,
        split="test",
    ),
    "yfcc4k": Layout(
        name="yfcc4k",
        csv_names=("yfcc4k_places365.csv",),
        id_columns=("IMG_ID",),
        image_columns=("IMG_ID",),
        lat_columns=("LAT",),
        lon_columns=("LON",),
        image_dirs=("yfcc4k_rgb_images", "yfcc4k", "images", ""),
        place_columns=_PLACES365,
        split="test",
    ),
}


@dataclasses.dataclass(frozen=True)
class RawRow:
    """One CSV row before validation: texts exactly as in the file."""

    row_number: int  # 1-based data row (the header is row 0)
    id: str
    image_ref: str
    lat_text: str
    lon_text: str
    place: dict[str, str]


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
            raise FileNotFoundError(f"metadata CSV {path} not found")
        return path
    for name in layout.csv_names:
        path = os.path.join(manual_dir, name)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"no {layout.name} metadata CSV in {manual_dir}: looked for {list(layout.csv_names)}; "
        f"pass csv_path to name it")


def _pick(header: Sequence[str], aliases: Sequence[str], what: str, path: str, required: bool = True) -> str | None:
    """The header column matching one of ``aliases`` (case-insensitive, first alias wins)."""
    lowered = {column.strip().lower(): column for column in header}
    for alias in aliases:
        if alias.lower() in lowered:
            return lowered[alias.lower()]
    if required:
        raise ValueError(f"{path}: no {what} column; expected one of {list(aliases)}, header is {list(header)}")
    return None


def read_rows(path: str, layout: Layout) -> Iterator[RawRow]:
    """Stream a layout's CSV as ``RawRow``s (missing cells become empty strings)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return
        image_column = _pick(header, layout.image_columns, "image", path)
        id_column = _pick(header, layout.id_columns, "id", path, required=False) or image_column
        lat_column = _pick(header, layout.lat_columns, "latitude", path)
        lon_column = _pick(header, layout.lon_columns, "longitude", path)
        index = {column: i for i, column in enumerate(header)}
        places = [(column, index[column]) for column in layout.place_columns if column in index]

        def cell(row, column):
            """The stripped cell of ``column`` ('' past a short row's end)."""
            i = index[column]
            return row[i].strip() if i < len(row) else ""

        for number, row in enumerate(reader, start=1):
            if not row or not any(c.strip() for c in row):
                continue
            yield RawRow(
                row_number=number,
                id=cell(row, id_column),
                image_ref=cell(row, image_column),
                lat_text=cell(row, lat_column),
                lon_text=cell(row, lon_column),
                place={column: row[i].strip() for column, i in places if i < len(row) and row[i].strip()},
            )


class ImageLocator:
    """Finds a row's image file under the layout's image folders.

    Tries each folder with the reference as written, with ``/`` replaced by
    ``_`` (MP16 tars unpack flat) and by its base name.
    """

    def __init__(self, layout: Layout, manual_dir: str, image_dir: str | None = None):
        if image_dir:
            roots = [image_dir if os.path.isabs(image_dir) else os.path.join(manual_dir, image_dir)]
        else:
            roots = [os.path.join(manual_dir, d) if d else manual_dir for d in layout.image_dirs]
        self.roots = [r for r in roots if os.path.isdir(r)] or [roots[0]]

    def find(self, ref: str) -> str | None:
        """Path of the image file for ``ref``, or None if no candidate exists."""
        if not ref:
            return None
        if os.path.isabs(ref):
            return ref if os.path.isfile(ref) else None
        names = dict.fromkeys([ref, ref.replace("/", "_"), os.path.basename(ref)])
        for root in self.roots:
            for name in names:
                path = os.path.join(root, name)
                if os.path.isfile(path):
                    return path
        return None
