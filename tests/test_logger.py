"""run.logger.MetricsLogger: what each log writes stays bounded over a run, locally and on a URL workdir
(the offline ``lfs://`` scheme of tests/url_scheme.py), and a resume drops what was logged past its step."""

import json
import pathlib
import struct
import time

import pytest
from tensorboardX.proto import event_pb2

import url_scheme
from geor_jax import paths
from geor_jax.run import logger as logger_lib


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.fixture
def lfs(tmp_path, monkeypatch):
    """``lfs://bucket/...`` backed by ``tmp_path/bucket/...``."""
    monkeypatch.setenv(url_scheme.ROOT_VARIABLE, str(tmp_path))
    for cache in (url_scheme._filesystem.cache_clear, url_scheme.LocalBackedFileSystem.clear_instance_cache):
        cache()  # the root is read when the filesystem is made
    yield tmp_path / "bucket"
    url_scheme._filesystem.cache_clear()
    url_scheme.LocalBackedFileSystem.clear_instance_cache()


@pytest.fixture
def uploads(monkeypatch):
    """The sizes of the whole-file writes of metrics.jsonl."""
    sizes, write = [], paths.write_atomic
    monkeypatch.setattr(paths, "write_atomic", lambda path, data: (sizes.append(len(data)), write(path, data)))
    return sizes


def steps(path: pathlib.Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def events(folder: pathlib.Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in the event files of ``folder``, read in name order as TensorBoard does."""
    found = []
    for file in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = file.read_bytes(), 0
        while offset < len(data):  # records: length (u64), its crc, the Event, its crc
            (length,) = struct.unpack("Q", data[offset:offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 16 + length
            found += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    return found


def test_a_url_workdir_uploads_metrics_at_a_bounded_cadence_and_at_sync(lfs, uploads, capsys):
    """100 logs a second apart: metrics.jsonl is uploaded once a minute and at ``sync`` / ``close``, not at
    every log (which made a run upload O(steps^2) bytes)."""
    clock = Clock()
    metrics = logger_lib.MetricsLogger("lfs://bucket/run", 100, upload_every_s=60, clock=clock)
    for step in range(1, 101):
        clock.now += 1
        metrics.log(step, {"loss": 1.0 / step})
        if step == 70:
            metrics.sync()  # as the loop does before a checkpoint save
            assert steps(lfs / "run" / "metrics.jsonl") == list(range(1, 71))
    metrics.close()
    assert steps(lfs / "run" / "metrics.jsonl") == list(range(1, 101))
    assert len(uploads) == 4  # the (empty) start, at 60 s, at the sync, at the close
    assert "[train] step 100/100 loss 0.01" in capsys.readouterr().out


def test_a_url_workdir_rolls_tensorboard_events_into_bounded_parts(lfs, monkeypatch):
    """A flush rewrites only the current part, which rolls over once it holds ``part_bytes``: no flush
    uploads the history. The parts, read in name order, hold every scalar once and in order."""
    part_bytes = 1024
    flushed, flush = [], logger_lib._EventFile.flush
    monkeypatch.setattr(logger_lib._EventFile, "flush",
                        lambda self: (flushed.append((self.part, self.buffer.tell())), flush(self)))
    metrics = logger_lib.MetricsLogger("lfs://bucket/run", 200, part_bytes=part_bytes)
    for step in range(1, 201):
        metrics.log(step, {"loss": float(step), "lr": 0.5})
    metrics.close()
    parts = sorted((lfs / "run" / "tensorboard").glob("events.out.tfevents.*"))
    sizes = [part.stat().st_size for part in parts]
    assert len(parts) >= 5 and min(sizes[:-1]) >= part_bytes, sizes  # a part is left once full
    # each upload is (a prefix of) its own part; a flush of a just-started, still empty part writes nothing
    assert all(size <= sizes[part] for part, size in flushed if size), (flushed, sizes)
    assert events(lfs / "run" / "tensorboard") == [(s, tag, v) for s in range(1, 201)
                                                   for tag, v in (("train/loss", s), ("train/lr", 0.5))]


def test_a_part_filled_exactly_rolls_over_without_writing_an_empty_part(lfs):
    """When the last flush fills a part, the next part starts empty; closing then writes no empty file
    (the writer thread's timing decides whether a run ends so, hence this case on its own)."""
    (lfs / "run").mkdir(parents=True)
    events_file = logger_lib._EventFile("lfs://bucket/run/events.out.tfevents.1", part_bytes=8)
    events_file.write(b"12345678")
    events_file.flush()
    events_file.close()
    assert events_file.part == 1
    assert sorted(p.name for p in (lfs / "run").iterdir()) == ["events.out.tfevents.1"]
    assert (lfs / "run" / "events.out.tfevents.1").read_bytes() == b"12345678"


@pytest.mark.parametrize("on_url", [False, True], ids=["local", "url"])
def test_a_resume_drops_the_lines_past_its_step_and_appends_after(tmp_path, lfs, uploads, on_url, monkeypatch):
    """Locally each log appends a line (no whole-file rewrite); either way the resumed run's lines follow
    the kept ones and each step appears once (a line cut by the kill is dropped)."""
    workdir, folder = ("lfs://bucket/run", lfs / "run") if on_url else (str(tmp_path / "run"), tmp_path / "run")
    first = logger_lib.MetricsLogger(workdir, 6)
    for step in range(1, 6):
        first.log(step, {"loss": 1.0})
    first.close()
    with open(folder / "metrics.jsonl", "a") as f:
        f.write('{"split": "train", "st')  # the kill cut a line
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 10)  # a later process: its own event file name
    resumed = logger_lib.MetricsLogger(workdir, 6, start_step=3)
    assert steps(folder / "metrics.jsonl") == [1, 2, 3]
    for step in range(4, 7):
        resumed.log(step, {"loss": 2.0})
    resumed.close()
    assert steps(folder / "metrics.jsonl") == [1, 2, 3, 4, 5, 6]
    assert len(uploads) == (4 if on_url else 2)  # the two starts; on a URL also the two closes
    assert [s for s, _, _ in events(folder / "tensorboard")] == [1, 2, 3, 4, 5, 4, 5, 6]  # the new writer purges
