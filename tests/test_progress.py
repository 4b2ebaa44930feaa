"""geor_jax.progress: log lines with rate and ETA every N seconds, a bar on a terminal, silence off process 0;
and the dataset build and the mining report through it."""

import io
import logging

import numpy as np
import pyarrow as pa
import pytest

from geor_jax import progress
from geor_jax.data import demo_world, hard_mining


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "geor_jax"]


@pytest.fixture
def caplog(caplog):
    caplog.set_level(logging.INFO, logger="geor_jax")
    return caplog


def test_a_line_every_interval_with_rate_and_eta_then_the_total(caplog):
    clock = Clock()
    with progress.Progress("evaluation", 200, every_s=10, stream=io.StringIO(), clock=clock) as shown:
        for _ in range(18):  # 10 examples per 2 s: a line at 10, 20 and 30 s
            clock.now += 2
            shown.update(10)
    assert lines(caplog) == ["evaluation: 50/200 examples (25.0%), 5 examples/s, eta 30s",
                             "evaluation: 100/200 examples (50.0%), 5 examples/s, eta 20s",
                             "evaluation: 150/200 examples (75.0%), 5 examples/s, eta 10s",
                             "evaluation: 180/200 examples (90.0%) in 36s, 5 examples/s"]  # stopped early


def test_no_total_gives_the_rate_and_long_etas_read_in_hours(caplog):
    clock = Clock()
    shown = progress.Progress("mining", None, unit="rows", every_s=0, stream=io.StringIO(), clock=clock)
    clock.now += 4
    shown.update(1000)
    slow = progress.Progress("building", 10_000, unit="rows", every_s=0, stream=io.StringIO(), clock=clock)
    clock.now += 3
    slow.update(1)
    assert lines(caplog) == ["mining: 1000 rows, 250 rows/s",
                             "building: 1/10000 rows (0.0%), 0.333 rows/s, eta 8h19m"]


def test_other_processes_are_silent_and_a_terminal_gets_a_bar(caplog):
    clock = Clock()
    with progress.Progress("evaluation", 4, show=False, every_s=0, stream=Terminal(), clock=clock) as hidden:
        hidden.update(4)
    assert lines(caplog) == []
    terminal = Terminal()
    with progress.Progress("evaluation", 4, every_s=0, stream=terminal, clock=clock) as shown:
        for item in shown.counted("abcd"):
            clock.now += 1
    assert "evaluation: 100%" in terminal.getvalue() and "4/4" in terminal.getvalue()  # tqdm's bar
    assert lines(caplog) == ["evaluation: 4/4 examples (100.0%) in 4s, 1 examples/s"]  # only the summary


def test_a_detail_ends_each_line_and_bar_false_logs_on_a_terminal_too(caplog):
    clock = Clock()
    shown = progress.Progress("rollout of 4 rows", 8, unit="steps", every_s=0, stream=Terminal(), bar=False,
                              clock=clock)
    clock.now += 2
    shown.detail = "1/4 rows done"
    shown.update(4)
    shown.close()
    assert shown.lines == 1
    assert lines(caplog) == ["rollout of 4 rows: 4/8 steps (50.0%), 2 steps/s, eta 2s, 1/4 rows done",
                             "rollout of 4 rows: 4/8 steps (50.0%) in 2s, 2 steps/s, 1/4 rows done"]


def test_csv_rows_counts_data_lines(tmp_path):
    (tmp_path / "a.csv").write_text("id,lat,lon\n1,2,3\n4,5,6\n")
    (tmp_path / "b.csv").write_text("id,lat,lon\n7,8,9")  # no final newline
    (tmp_path / "c.csv").write_text("id,lat,lon\n")
    assert progress.csv_rows([tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]) == 3


def test_the_build_and_the_mining_log_their_progress(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(progress, "_every_s", lambda: 0.0)  # a line at every row
    demo_world.build_demo_records(str(tmp_path / "data"), num_images=5, seed=0, height=32, width=32)
    built = [line for line in lines(caplog) if line.startswith("building demo_5_0_train train")]
    assert built[0].startswith("building demo_5_0_train train: 1/5 rows (20.0%), ") and "eta" in built[0]
    assert built[-1].startswith("building demo_5_0_train train: 5/5 rows (100.0%) in ")

    caplog.clear()
    ids = pa.array(["a", "b", "c", "d"])
    chunks = lambda: iter([(ids[:2], np.zeros(2), np.zeros(2)), (ids[2:], np.full(2, 50.0), np.zeros(2))])  # noqa
    predictions = hard_mining.Predictions(ids[:1], np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1), None)
    summary = hard_mining.mine_streaming(chunks, predictions, io.StringIO(), total_rows=4)
    assert summary["kept"] == 2
    mined = lines(caplog)
    assert mined[0].startswith("mining: 1 hotspots: 2/4 rows (50.0%), ") and "eta" in mined[0]
    assert mined[-1].startswith("mining: 1 hotspots: 4/4 rows (100.0%) in ")
