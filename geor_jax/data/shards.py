"""A build split across hosts (``--shard=i/n``), resumable by shard, merged into one records folder.

Shard i holds every row whose id hashes to i (``rows.shard_of``), so all
copies of an id meet in one shard and the duplicate rule holds. Each shard
is its own TFDS build under ``<config>/shards-of-<n>/<i>/`` (TFDS publishes
it atomically), followed by ``<i>.report.json``: a shard with that file is
done and is never rebuilt, a crashed one is rebuilt from scratch. The
process that finishes the last shard merges: the limits are checked over
all shards' reports together, the shard files are hard-linked (copied where
links fail) into a new folder with one split, the coordinates sidecars are
joined, and the folder is renamed into place, so readers only ever see a
whole build. Hosts must share ``data_dir`` (a shared filesystem).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import socket

import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core import splits as splits_lib

from geor_jax.data import builder as builder_lib

BuildReport = builder_lib.BuildReport


def _shards_root(final: builder_lib.GeoCorRecords, num_shards: int) -> str:
    return os.path.join(os.path.dirname(os.fspath(final.data_dir)), f"shards-of-{num_shards}")


def _report_path(root: str, shard: int) -> str:
    return os.path.join(root, f"{shard}.report.json")


def build_shard(layout: str, manual_dir: str, data_dir: str, shard: tuple[int, int],
                options: builder_lib.BuildOptions, content: dict) -> tuple[str, BuildReport | None]:
    """Build shard ``i`` of ``n`` unless it is done, then merge if every shard is; returns (records dir, report).

    The report is the merged one once this call merged, the shard's own
    before that, and None if the merged records already existed.
    """
    index, num_shards = shard
    final = builder_lib.make_builder(layout, data_dir, options=options, **content)
    if final.is_prepared():
        return os.fspath(final.data_dir), None
    root = _shards_root(final, num_shards)
    report_path = _report_path(root, index)
    if os.path.isfile(report_path):
        print(f"shard {index}/{num_shards} already built ({report_path})")
    else:
        part_root = os.path.join(root, str(index))
        shutil.rmtree(part_root, ignore_errors=True)  # what a crashed run of this shard left
        part = builder_lib.make_builder(layout, part_root, options=dataclasses.replace(options, shard=shard), **content)
        try:
            report = builder_lib.prepare(part, manual_dir)
        except builder_lib.EmptyPartError as empty:
            report = empty.report
        partial = f"{report_path}.partial"
        report.save(partial)
        os.replace(partial, report_path)
    done = [i for i in range(num_shards) if os.path.isfile(_report_path(root, i))]
    if len(done) < num_shards:
        print(f"{len(done)} of {num_shards} shards built; the run that builds the last one merges them")
        return os.fspath(final.data_dir), BuildReport.from_dict(_load(report_path))
    try:
        return os.fspath(final.data_dir), merge(final, root, num_shards)
    except OSError:
        if not final.is_prepared():
            raise
        # Shards run side by side (on one host or several) can finish together: both merge, one publishes
        # first and removes the shard builds the other was reading.
        print(f"another run merged the {num_shards} shards first into {os.fspath(final.data_dir)}")
        return os.fspath(final.data_dir), None


def _load(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _link(source: str, target: str) -> None:
    """Hard-link ``source`` to ``target`` (no copy of the data), or copy where the filesystem has no links."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def merge(final: builder_lib.GeoCorRecords, root: str, num_shards: int) -> BuildReport:
    """Join the ``num_shards`` shard builds under ``root`` into ``final``'s records folder; returns the report.

    Raises ``BadRowsError`` (nothing published, ``build_report.failed.json``
    left in the config folder) if the joined report fails the limits.
    """
    reports = [BuildReport.from_dict(_load(_report_path(root, i))) for i in range(num_shards)]
    total = reports[0]
    for other in reports[1:]:
        total.merge(other)
    print(total.summary())
    final_dir = os.fspath(final.data_dir)
    problem = total.failure()
    if problem:
        failed = os.path.join(os.path.dirname(final_dir), "build_report.failed.json")
        total.save(failed)
        raise builder_lib.BadRowsError(f"{problem}; nothing was published (report: {failed})", total)
    split = total.split
    parts = [tfds.builder_from_directory(d) for d in sorted(glob.glob(os.path.join(root, "*", "geo_cor_records",
                                                                                  "*", "*")))
             if os.path.isfile(os.path.join(d, "dataset_info.json"))]
    work = f"{final_dir}.merging-{socket.gethostname()}-{os.getpid()}"
    os.makedirs(work)
    try:
        _assemble(final, parts, split, work, total)
        os.rename(work, final_dir)  # atomic; fails if another run's merge got there first
    except OSError:
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(root, ignore_errors=True)
    print(f"merged {num_shards} shards into {final_dir}")
    return total


def _assemble(final: builder_lib.GeoCorRecords, parts: list, split: str, work: str, total: BuildReport) -> None:
    """The merged records folder in ``work``: the parts' files linked in order, one coordinates sidecar,
    the dataset info and the report."""
    template = naming.ShardedFileTemplate(data_dir=work, dataset_name=final.name, split=split,
                                          filetype_suffix="array_record")
    infos = [part.info.splits[split] for part in parts]
    files = [path for info in infos for path in info.filepaths]
    for k, path in enumerate(files):
        _link(os.fspath(path), template.sharded_filepath(shard_index=k, num_shards=len(files)))
    with open(os.path.join(work, f"{split}.coordinates.csv"), "w", encoding="utf-8") as out:
        out.write(builder_lib.COORDINATES_HEADER + "\n")
        for part in parts:
            with open(os.path.join(os.fspath(part.data_dir), f"{split}.coordinates.csv"), encoding="utf-8") as f:
                next(f)
                shutil.copyfileobj(f, out)
    info = final.info
    info.set_splits(splits_lib.SplitDict([splits_lib.SplitInfo(
        name=split, shard_lengths=[n for i in infos for n in i.shard_lengths],
        num_bytes=sum(i.num_bytes for i in infos), filename_template=template)]))
    info.write_to_directory(work)
    total.save(os.path.join(work, builder_lib.REPORT_NAME))
