"""A run's metrics: one progress line on stdout, TensorBoard event files and ``metrics.jsonl`` (process 0)."""

from __future__ import annotations

import io
import json
import logging
import time

import jax
from tensorboardX import SummaryWriter, record_writer

from geor_jax import paths


class MetricsLogger:
    """Step metrics to stdout (one progress line), TensorBoard event files and
    ``metrics.jsonl`` (one JSON line per log; process 0 only), in a local or URL workdir.

    A run resumed from step ``start_step`` first drops what an interrupted
    run logged after that step (it is about to be replayed), so each step is
    logged once: later lines of ``metrics.jsonl`` are removed (a line cut by
    the kill is dropped with a warning) and TensorBoard purges its later events.
    ``metrics.jsonl`` is rewritten whole, atomically, at every log (object
    stores have no append; a run logs a few thousand short lines).
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.writer = None
        self.jsonl_path = paths.as_path(workdir) / "metrics.jsonl"
        self.lines: list[str] = []
        if jax.process_index() == 0:
            self.lines = _lines_up_to(self.jsonl_path, start_step) if start_step else []
            events = paths.as_path(workdir) / "tensorboard"
            if paths.is_url(events):
                record_writer.register_writer_factory(str(events).split(":", 1)[0], _EpathEventFiles())
            self.writer = SummaryWriter(str(events), purge_step=start_step + 1 if start_step else None)
            paths.write_atomic(self.jsonl_path, "".join(self.lines))

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Write scalars; print ``step N/T key value ...``."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
        self.lines.append(json.dumps({"split": prefix, "step": step, **metrics}) + "\n")
        paths.write_atomic(self.jsonl_path, "".join(self.lines))
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{prefix}] step {step}/{self.total_steps} {shown}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _lines_up_to(path, last_step: int) -> list[str]:
    """The lines of ``path`` up to ``last_step`` (none if it is missing); unreadable lines dropped."""
    if not path.exists():
        return []
    kept, dropped = [], 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            logging.warning("%s line %d is not JSON (cut by the interruption?); dropped", path, number)
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        logging.info("dropped %d metric lines after step %d from %s (replayed on resume)", dropped, last_step, path)
    return kept


class _EventFile:
    """A TensorBoard event file on any epath filesystem: buffered, and the whole file rewritten at each
    flush (what tensorboardX's own gs:// writer does; it needs google-cloud-storage, this only epath)."""

    def __init__(self, path: str):
        self.path, self.buffer = paths.as_path(path), io.BytesIO()

    def write(self, data: bytes) -> None:
        self.buffer.write(data)

    def flush(self) -> None:
        self.path.write_bytes(self.buffer.getvalue())

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX's writer factory interface for a URL scheme."""

    def open(self, path: str) -> _EventFile:
        return _EventFile(path)

    def directory_check(self, path: str) -> None:
        paths.as_path(path).mkdir(parents=True, exist_ok=True)


class IntervalTimer:
    """Mean seconds per step and tokens since the last lap (steps run asynchronously,
    so one step's wall time is meaningless; an interval's is not)."""

    def __init__(self):
        self.start, self.steps, self.tokens = time.perf_counter(), 0, 0.0

    def count(self, tokens: float) -> None:
        self.steps, self.tokens = self.steps + 1, self.tokens + tokens

    def lap(self) -> tuple[float, float]:
        """(seconds per step, tokens per step) over the interval; starts the next one."""
        now = time.perf_counter()
        seconds, tokens = (now - self.start) / max(self.steps, 1), self.tokens / max(self.steps, 1)
        self.start, self.steps, self.tokens = now, 0, 0.0
        return seconds, tokens
