"""A run's metrics: one progress line on stdout, TensorBoard event files and ``metrics.jsonl`` (process 0)."""

from __future__ import annotations

import json
import logging
import os
import time

import jax
from tensorboardX import SummaryWriter


class MetricsLogger:
    """Step metrics to stdout (one progress line), TensorBoard event files and
    ``metrics.jsonl`` (one JSON line per log; process 0 only).

    A run resumed from step ``start_step`` first drops what an interrupted
    run logged after that step (it is about to be replayed), so each step is
    logged once: later lines of ``metrics.jsonl`` are removed (a line cut by
    the kill is dropped with a warning) and TensorBoard purges its later events.
    """

    def __init__(self, workdir: str, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self.writer = None
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        if jax.process_index() == 0:
            if start_step:
                _truncate_metrics(self.jsonl_path, start_step)
            self.writer = SummaryWriter(os.path.join(workdir, "tensorboard"),
                                        purge_step=start_step + 1 if start_step else None)

    def log(self, step: int, metrics: dict[str, float], prefix: str = "train") -> None:
        """Write scalars; print ``step N/T key value ...``."""
        if self.writer is None:
            return
        for key, value in metrics.items():
            self.writer.add_scalar(f"{prefix}/{key}", value, step)
        self.writer.flush()
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps({"split": prefix, "step": step, **metrics}) + "\n")
        shown = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        print(f"[{prefix}] step {step}/{self.total_steps} {shown}", flush=True)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _truncate_metrics(path: str, last_step: int) -> None:
    """Keep the lines of ``path`` up to ``last_step``, rewritten atomically; drop unreadable lines."""
    if not os.path.exists(path):
        return
    kept, dropped = [], 0
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logging.warning("%s line %d is not JSON (cut by the interruption?); dropped", path, number)
                continue
            if row.get("step", 0) <= last_step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    with open(path + ".tmp", "w") as f:
        f.writelines(kept)
    os.replace(path + ".tmp", path)
    if dropped:
        logging.info("dropped %d metric lines after step %d from %s (replayed on resume)", dropped, last_step, path)


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
