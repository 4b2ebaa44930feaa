"""One build, three ways: in this process, in worker processes, and in shards (--shard=i/n, resumed after a crash).

Each writes the same examples and the same report as the single-process build.
"""

import csv
import os

import numpy as np
import psutil
import pytest

from geor_jax import regions
from geor_jax.data import builder
from tests import data_fixtures


def write_messy_collection(root, count=24):
    """An MP16-Pro download (split tar) whose rows repeat ids, miss images and hold unreadable ones."""
    members, refs = {}, []
    for i in range(count):
        ref = f"{i:02x}/b/{i}.jpg"
        refs.append(ref)
        members[f"mp-16-images/{ref.replace('/', '_')}"] = (data_fixtures.jpeg_bytes(i, (40, 30)) if i % 7 != 3
                                                            else b"not a jpeg")
    data_fixtures.write_tar(os.path.join(root, "whole.tar"), members)
    data_fixtures.split_file(os.path.join(root, "whole.tar"), os.path.join(root, "mp-16-images"), 3)
    rng = np.random.default_rng(1)
    rows = [[ref, float(rng.uniform(-60, 70)), float(rng.uniform(-179, 179))] for ref in refs]
    rows += [[refs[0], 1.0, 2.0], [refs[3], 3.0, 4.0], ["ff/b/missing.jpg", 5.0, 6.0], [refs[5], "x", 7.0]]
    with open(os.path.join(root, "MP16_Pro_filtered.csv"), "w", newline="") as f:
        csv.writer(f).writerows([["IMG_ID", "LAT", "LON"], *rows])
    return len(rows)


LIMITS = dict(max_bad_fraction=0.5, max_missing_fraction=0.5)


def records_of(records_dir, split="train"):
    """id -> {feature: value} of every record, comparable with ==."""
    source = builder.open_records(records_dir, split)
    out = {}
    for i in range(len(source)):
        record = source[i]
        out[record["id"].decode()] = {k: (v.item() if isinstance(v, np.ndarray) else v) for k, v in record.items()}
    return out


def report_counts(report):
    return {"total_rows": report.total_rows, "written": report.written, "bad": report.bad,
            "examples": report.examples}


def coordinates_of(records_dir, split="train"):
    with open(os.path.join(records_dir, f"{split}.coordinates.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["id", "lat", "lon"]
    return {r[0]: (float(r[1]), float(r[2])) for r in rows[1:]}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process build of the messy collection: (manual dir, records, report)."""
    root = tmp_path_factory.mktemp("single")
    manual = root / "manual"
    manual.mkdir()
    write_messy_collection(str(manual))
    records_dir, report = builder.build_records("mp16_pro", str(manual), str(root / "data"), num_workers=0,
                                                chunk_size=5, **LIMITS)
    return str(manual), records_of(records_dir), report, records_dir


def test_the_single_process_build_settles_every_row(single):
    _, records, report, records_dir = single
    # 24 images, 3 of them unreadable (also the second copy of 03's); 0's second copy is a duplicate.
    assert report.bad["duplicate_id"] == 1 and report.bad["image_unreadable"] == 4
    assert report.bad["image_missing"] == 1 and report.bad["lat_lon_not_numeric"] == 1
    assert report.written == len(records) == 21 and report.total_rows == 28
    coordinates = coordinates_of(records_dir)
    assert coordinates == {key: (r["lat"], r["lon"]) for key, r in records.items()}


def test_worker_processes_write_the_same_examples(single, tmp_path, monkeypatch):
    manual, expected, expected_report, _ = single
    workers_seen = []
    geocode = regions.chain_of_region

    def watching(points):
        # Workers fork from the forkserver, a child of this process: count its children.
        workers_seen.append(sum(len(child.children()) for child in psutil.Process().children()))
        return geocode(points)

    monkeypatch.setattr(builder.regions, "chain_of_region", watching)
    records_dir, report = builder.build_records("mp16_pro", manual, str(tmp_path / "data"), num_workers=2,
                                                chunk_size=5, **LIMITS)
    assert records_of(records_dir) == expected
    assert report_counts(report) == report_counts(expected_report)
    assert max(workers_seen) == 2  # images were decoded in 2 worker processes, not threads of this one


def test_sharded_build_resumes_after_a_crash_and_merges_to_the_same_records(single, tmp_path, monkeypatch):
    manual, expected, expected_report, _ = single
    data_dir = str(tmp_path / "data")
    build = lambda i: builder.build_records("mp16_pro", manual, data_dir, shard=(i, 3), num_workers=0,  # noqa: E731
                                            chunk_size=5, **LIMITS)
    records_dir, part_report = build(0)
    assert not os.path.exists(records_dir) and 0 < part_report.written < len(expected)
    shards_root = os.path.join(os.path.dirname(records_dir), "shards-of-3")

    original = builder.GeoCorRecords._write_chunk

    def crash(self, *args):
        yield from original(self, *args)
        raise RuntimeError("host lost")

    monkeypatch.setattr(builder.GeoCorRecords, "_write_chunk", crash)
    with pytest.raises(RuntimeError, match="host lost"):
        build(1)
    monkeypatch.setattr(builder.GeoCorRecords, "_write_chunk", original)
    assert not os.path.exists(os.path.join(shards_root, "1.report.json"))

    built = []
    prepare = builder.prepare
    monkeypatch.setattr(builder, "prepare", lambda b, *a, **k: built.append(b.options.shard) or prepare(b, *a, **k))
    build(1)  # resumes: shard 1 again, shard 0 kept
    records_dir, report = build(2)  # the last shard merges
    assert built == [(1, 3), (2, 3)]  # shard 0 was not built again
    assert records_of(records_dir) == expected
    assert report_counts(report) == report_counts(expected_report)
    assert coordinates_of(records_dir) == {key: (r["lat"], r["lon"]) for key, r in expected.items()}
    assert not os.path.exists(shards_root)  # merged: the shard builds are gone
    assert build(0) == (records_dir, None)  # already built


def test_shards_without_rows_and_a_merge_past_the_limits(single, tmp_path):
    manual, expected, _, _ = single
    data_dir = str(tmp_path / "data")
    for i in range(32):  # 22 ids over 32 shards: some shards are empty
        records_dir, report = builder.build_records("mp16_pro", manual, data_dir, shard=(i, 32), num_workers=0,
                                                    **LIMITS)
    assert records_of(records_dir) == expected

    strict = str(tmp_path / "strict")
    for i in range(2):
        if i == 0:
            builder.build_records("mp16_pro", manual, strict, shard=(i, 2), num_workers=0)
            continue
        with pytest.raises(builder.BadRowsError, match="too many bad rows: 6 of 28 malformed.*nothing was published"):
            builder.build_records("mp16_pro", manual, strict, shard=(i, 2), num_workers=0)
    assert not os.path.exists(os.path.join(strict, "geo_cor_records", "mp16_pro", "1.1.0"))


def test_shard_flag_on_the_command_line(single, tmp_path):
    import subprocess
    import sys

    manual, expected, _, _ = single
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    tool = os.path.join(root, "tools", "build_dataset.py")

    def command(*flags):
        return [sys.executable, tool, "--layout=mp16_pro", f"--manual_dir={manual}", f"--data_dir={tmp_path}",
                "--num_workers=0", "--max_bad_fraction=0.5", "--max_missing_fraction=0.5", *flags]

    def run(*flags):
        return subprocess.run(command(*flags), cwd=root, env={**os.environ, "PYTHONPATH": root},
                              capture_output=True, text=True)

    bad = run("--shard=2/2")
    assert bad.returncode != 0 and "--shard='2/2': need 0 <= i < n" in bad.stderr
    # Both shards side by side, as on one many-core host: whichever finishes last merges (if both finish
    # together, both merge and one publishes).
    both = [subprocess.Popen(command(f"--shard={i}/2"), cwd=root, env={**os.environ, "PYTHONPATH": root},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outputs = [shard.communicate() for shard in both]
    assert [shard.returncode for shard in both] == [0, 0], [err for _, err in outputs]
    assert sum("merged 2 shards" in out for out, _ in outputs) == 1, outputs
    assert records_of(os.path.join(tmp_path, "geo_cor_records", "mp16_pro", "1.1.0")) == expected


def test_a_merge_that_another_run_published_first_returns_the_published_records(single, tmp_path, monkeypatch):
    """Two runs finishing the last shards together both merge; the one that loses finds the shard builds gone
    (the winner removed them) and returns the published folder instead of failing."""
    from geor_jax.data import shards

    manual, expected, _, _ = single
    data_dir = str(tmp_path / "data")
    build = lambda i: builder.build_records("mp16_pro", manual, data_dir, shard=(i, 2), num_workers=0,  # noqa: E731
                                            **LIMITS)
    build(0)
    merge = shards.merge
    monkeypatch.setattr(shards, "merge", lambda *args: (merge(*args), merge(*args)))  # the first call: the winner
    records_dir, report = build(1)
    assert report is None and records_of(records_dir) == expected


def test_worker_processes_do_not_rerun_the_launching_script(single, tmp_path):
    """A build launched from a script starts its workers without importing that script again.

    multiprocessing re-runs ``__main__`` in every worker it starts (as ``__mp_main__``) unless told
    otherwise; tools/build_dataset.py imports TFDS and absl, ~3 s of each worker's start on this machine.
    """
    import subprocess
    import sys

    manual, expected, _, _ = single
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    imports = tmp_path / "imports.txt"
    script = tmp_path / "launch_build.py"
    script.write_text(
        "import os, sys\n"
        "with open(os.environ['IMPORTS'], 'a') as f:\n"
        "    f.write(__name__ + '\\n')\n"
        "from geor_jax.data import builder\n"
        "if __name__ == '__main__':\n"
        "    builder.build_records('mp16_pro', sys.argv[1], sys.argv[2], num_workers=2, chunk_size=5,\n"
        "                          max_bad_fraction=0.5, max_missing_fraction=0.5)\n")
    data_dir = tmp_path / "data"
    run = subprocess.run([sys.executable, str(script), manual, str(data_dir)], cwd=root, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": root, "IMPORTS": str(imports)})
    assert run.returncode == 0, run.stderr
    assert imports.read_text().split() == ["__main__"]  # never "__mp_main__": no worker ran the script
    assert records_of(os.path.join(data_dir, "geo_cor_records", "mp16_pro", "1.1.0")) == expected


def test_a_killed_build_leaves_no_worker_behind_and_builds_again(single, tmp_path):
    """SIGKILL of a build with worker processes, while they decode: every process it started ends by itself
    (none waits forever on a queue nobody writes), and the same command then builds the same records."""
    import signal
    import subprocess
    import sys
    import time

    manual, expected, _, _ = single
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    started = tmp_path / "started.txt"
    script = tmp_path / "killed_build.py"
    script.write_text(
        "import os, signal, sys, psutil\n"
        "from geor_jax import regions\n"
        "from geor_jax.data import builder\n"
        "def die(points):  # the first chunk's images are with the workers now\n"
        "    pids = [p.pid for p in psutil.Process().children(recursive=True)]\n"
        "    open(sys.argv[3], 'w').write(' '.join(map(str, pids)))\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if sys.argv[4] == 'kill':\n"
        "    regions.chain_of_region = die\n"
        "builder.build_records('mp16_pro', sys.argv[1], sys.argv[2], num_workers=2, chunk_size=5,\n"
        "                      max_bad_fraction=0.5, max_missing_fraction=0.5)\n")
    data_dir = tmp_path / "data"

    def run(mode):
        """The script's exit status and stderr (a file: orphaned workers would hold a pipe open)."""
        with open(tmp_path / f"{mode}.err", "w+") as err:
            code = subprocess.run([sys.executable, str(script), manual, str(data_dir), str(started), mode],
                                  cwd=root, stdout=subprocess.DEVNULL, stderr=err, timeout=300,
                                  env={**os.environ, "PYTHONPATH": root}).returncode
            err.seek(0)
            return code, err.read()

    code, err = run("kill")
    assert code == -signal.SIGKILL, err
    pids = [int(p) for p in started.read_text().split()]
    assert len(pids) >= 3  # the forkserver and its 2 workers (and multiprocessing's resource tracker)

    def alive(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 30
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(alive, pids)), [pid for pid in pids if alive(pid)]
    code, err = run("build")
    assert code == 0, err
    assert records_of(os.path.join(data_dir, "geo_cor_records", "mp16_pro", "1.1.0")) == expected
