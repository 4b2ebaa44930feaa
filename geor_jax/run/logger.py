"""A run's metrics: one progress line on stdout, TensorBoard event files and ``metrics.jsonl`` (process 0)."""

from __future__ import annotations

import io
import json
import logging
import threading
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

    What each log costs stays bounded over a run. Locally ``metrics.jsonl`` is
    appended to. On a URL (object stores cannot append) it is uploaded whole at
    most every ``upload_every_s`` seconds and at ``sync`` (which the train loop
    calls before each checkpoint save and after each evaluation, so every line
    up to a checkpointed step is stored before that checkpoint can be resumed
    from) and ``close``; TensorBoard events roll over to a new part file
    (``<event file>.00001``, ...; TensorBoard reads them in order) every
    ``part_bytes``, so a flush rewrites one part, not the whole history.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0, *, upload_every_s: float = 60.0,
                 part_bytes: int = 1 << 16, clock=time.monotonic):
        self.total_steps, self.upload_every_s, self.clock = total_steps, upload_every_s, clock
        self.writer = None
        self.jsonl_path = paths.as_path(workdir) / "metrics.jsonl"
        self.lines: list[str] = []  # on a URL: every line, uploaded whole
        self.pending = False  # lines not uploaded yet
        self.last_upload = clock()
        if jax.process_index() == 0:
            kept = _lines_up_to(self.jsonl_path, start_step) if start_step else []
            events = paths.as_path(workdir) / "tensorboard"
            if paths.is_url(events):
                record_writer.register_writer_factory(str(events).split(":", 1)[0], _EpathEventFiles(part_bytes))
                self.lines = kept
            self.writer = SummaryWriter(str(events), purge_step=start_step + 1 if start_step else None)
            paths.write_atomic(self.jsonl_path, "".join(kept))

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Write scalars; print ``step N/T key value ...``."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
        line = json.dumps({"split": prefix, "step": step, **metrics}) + "\n"
        if paths.is_url(self.jsonl_path):
            self.lines.append(line)
            self.pending = True
            if self.clock() - self.last_upload >= self.upload_every_s:
                self.sync()
        else:
            with self.jsonl_path.open("a") as f:
                f.write(line)
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{prefix}] step {step}/{self.total_steps} {shown}", flush=True)

    def sync(self) -> None:
        """Store every line logged so far (a URL's ``metrics.jsonl`` is uploaded now, if it changed)."""
        if self.pending:
            paths.write_atomic(self.jsonl_path, "".join(self.lines))
            self.pending, self.last_upload = False, self.clock()

    def close(self) -> None:
        self.sync()
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
    """A TensorBoard event file on any epath filesystem, in parts of about ``part_bytes``: each flush
    rewrites the current part (object stores cannot append; tensorboardX's own gs:// writer rewrites the
    whole file and needs google-cloud-storage, this only epath); a part that has reached the size is left
    as it is and the next one starts. Flushes come between whole records, so every part is a valid event
    file and TensorBoard reads the parts in name order."""

    def __init__(self, path: str, part_bytes: int):
        self.path, self.part_bytes, self.part, self.buffer = path, part_bytes, 0, io.BytesIO()
        self.lock = threading.Lock()  # tensorboardX's writer thread also flushes, every flush_secs

    def write(self, data: bytes) -> None:
        with self.lock:
            self.buffer.write(data)

    def flush(self) -> None:
        with self.lock:
            if self.part and not self.buffer.tell():  # nothing in the new part yet
                return
            name = self.path if self.part == 0 else f"{self.path}.{self.part:05d}"
            paths.as_path(name).write_bytes(self.buffer.getvalue())
            if self.buffer.tell() >= self.part_bytes:
                self.part, self.buffer = self.part + 1, io.BytesIO()

    def close(self) -> None:
        self.flush()


class _EpathEventFiles:
    """tensorboardX's writer factory interface for a URL scheme."""

    def __init__(self, part_bytes: int):
        self.part_bytes = part_bytes

    def open(self, path: str) -> _EventFile:
        return _EventFile(path, self.part_bytes)

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
