"""The build as an Apache Beam pipeline: TFDS's engine for large datasets (needs the ``beam`` extra).

The same steps as the single-process build (``rows``), distributed: the CSV
is scanned in ``scan_parts`` parts (part p keeps rows whose number is p
modulo the parts, so quoted newlines are no problem), candidates are
grouped by id and ``rows.resolve_copies`` settles each group in row order
(the first readable copy wins), images are read in place and encoded where
the group lands, and TFDS's Beam writer writes the records. The report is
combined in the pipeline and written next to the records; the builder reads
it when the pipeline is done and fails the build (nothing published) past
the limits. Runs on the DirectRunner (``direct_num_workers``,
``direct_running_mode=multi_processing``) or on Dataflow, Flink or Spark
through pipeline options; there, ``manual_dir`` and ``data_dir`` must be
on a filesystem every worker reads (archives are read with ``os.pread``).
"""

from __future__ import annotations

import dataclasses
import json
import os

import apache_beam as beam

from geor_jax import regions
from geor_jax.data import builder as builder_lib, encoding, layouts, report as report_lib, rows

REPORT_FILE = "beam_report.json"


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every worker needs to know (pickled into the pipeline)."""

    layout: layouts.Layout
    manual_dir: str
    csv_path: str
    options: builder_lib.BuildOptions
    max_long_side: int | None
    jpeg_quality: int
    report: dict  # the empty BuildReport, as a dict
    report_path: str
    scan_parts: int


class _Scan(beam.DoFn):
    """Part p of the CSV: each row classified; candidates keyed by id, everything else to the report."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def setup(self):
        self.locator = self.plan.options.locator(self.plan.layout, self.plan.manual_dir)  # archive indexes: cached
        self.ids = self.plan.options.read_ids()

    def process(self, part: int):
        every = self.plan.scan_parts
        keep = lambda row: row.row_number % every == part  # noqa: E731
        for outcome in rows.scan(layouts.read_rows(self.plan.csv_path, self.plan.layout), self.locator, ids=self.ids,
                                 keep=keep):
            if outcome is None:
                yield beam.pvalue.TaggedOutput("report", "not_selected")
            elif isinstance(outcome, rows.Skipped):
                yield beam.pvalue.TaggedOutput("report", outcome)
            else:
                yield outcome.id, outcome
            if outcome is not None and self.ids is not None:
                yield beam.pvalue.TaggedOutput("seen", outcome.id)


class _Resolve(beam.DoFn):
    """All copies of one id: the first readable is written (image read, encoded, geocoded), the rest reported."""

    def __init__(self, plan: Plan):
        self.plan = plan

    def process(self, id_copies):
        _, copies = id_copies
        plan = self.plan

        def read(copy):
            return encoding.load_image(copy.source, plan.max_long_side, plan.jpeg_quality)

        for copy, data, skipped in rows.resolve_copies(copies, read):
            if skipped is not None:
                yield beam.pvalue.TaggedOutput("report", skipped)
                continue
            region = regions.chain_of_region([(copy.lat, copy.lon)])[0]
            yield beam.pvalue.TaggedOutput("report", copy)
            yield copy.id, builder_lib.make_example(copy, data, region)


class _ReportFn(beam.CombineFn):
    """Outcomes -> one BuildReport (as a dict): counts add, examples stay the first few by row number."""

    def __init__(self, empty: dict):
        self.empty = empty

    def create_accumulator(self):
        return report_lib.BuildReport.from_dict(self.empty)

    def add_input(self, report, outcome):
        if outcome == "not_selected":
            report.not_selected += 1
        else:
            report.add(outcome)
        return report

    def merge_accumulators(self, reports):
        reports = list(reports)
        for other in reports[1:]:
            reports[0].merge(other)
        return reports[0]

    def extract_output(self, report):
        return report.to_dict()


def _write_report(report: dict, path: str, seen: int, requested: int | None) -> None:
    if requested is not None:
        report = report | {"ids_requested": requested, "ids_not_found": requested - seen}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(report, f)


def examples(builder: builder_lib.GeoCorRecords, layout: layouts.Layout, manual_dir: str, csv_path: str,
             split: str) -> beam.PTransform:
    """The PTransform TFDS runs for ``split``: () -> (id, example), plus the report and coordinates on the side."""
    config, options = builder.builder_config, builder.options
    data_dir = os.fspath(builder.data_dir)  # TFDS's unpublished folder while it builds
    ids = options.read_ids()
    plan = Plan(layout, manual_dir, csv_path, options, config.max_long_side, config.jpeg_quality,
                builder.build_report.to_dict(), os.path.join(data_dir, REPORT_FILE),
                max(1, options.beam_scan_parts))

    @beam.ptransform_fn
    def generate(root):
        scanned = (root | "Parts" >> beam.Create(range(plan.scan_parts))
                   | "Scan" >> beam.ParDo(_Scan(plan)).with_outputs("report", "seen", main="candidates"))
        resolved = (scanned.candidates | "ById" >> beam.GroupByKey()
                    | "Resolve" >> beam.ParDo(_Resolve(plan)).with_outputs("report", main="examples"))
        seen = scanned.seen | "DistinctIds" >> beam.Distinct() | "CountIds" >> beam.combiners.Count.Globally()
        _ = ((scanned.report, resolved.report) | "Outcomes" >> beam.Flatten()
             | "Report" >> beam.CombineGlobally(_ReportFn(plan.report))
             | "WriteReport" >> beam.Map(_write_report, plan.report_path, beam.pvalue.AsSingleton(seen),
                                         None if ids is None else len(ids)))
        _ = (resolved.examples
             | "CoordinateLines" >> beam.Map(lambda kv: builder_lib.coordinates_line(kv[0], kv[1]["lat"],
                                                                                      kv[1]["lon"]))
             | "WriteCoordinates" >> beam.io.WriteToText(os.path.join(data_dir, f"{split}.coordinates"),
                                                         file_name_suffix=".csv",
                                                         header=builder_lib.COORDINATES_HEADER))
        return resolved.examples

    return generate()


def read_report(builder: builder_lib.GeoCorRecords) -> report_lib.BuildReport:
    """The report the pipeline wrote (removed from the records folder: ``prepare`` saves it as build_report.json)."""
    path = os.path.join(os.fspath(builder.data_dir), REPORT_FILE)
    with open(path, encoding="utf-8") as f:
        report = report_lib.BuildReport.from_dict(json.load(f))
    os.remove(path)
    return report
