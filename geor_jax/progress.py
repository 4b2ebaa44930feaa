"""Progress of long loops (dataset builds, evaluation, mining, rollouts): done / total, rate and ETA.

``Progress`` logs one line every ``--progress_every_s`` seconds (default 30)
through the ``geor_jax`` logger, which absl's handler formats like every
absl log line (``run.cli.main`` keeps it at INFO while other libraries log
warnings only)::

    I0102 10:00:00.000000 ... progress.py:78] evaluation: 1200/4536 examples (26.5%), 41.2 examples/s, eta 1m21s

On a terminal it draws a tqdm bar instead, and logs only the final line.
Multi-host loops log from process 0 alone (``show=jax.process_index() == 0``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

import tqdm
from absl import flags

from geor_jax import paths

_EVERY_S = flags.DEFINE_float("progress_every_s", 30.0, "Seconds between progress log lines of long loops.")
logger = logging.getLogger("geor_jax")


def _every_s() -> float:
    return _EVERY_S.value if flags.FLAGS.is_parsed() else _EVERY_S.default


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """Counts ``unit``s done out of ``total`` (None: unknown, no ETA); a context manager.

    ``show`` False makes it silent (other hosts). ``every_s`` overrides the
    flag; ``stream`` (default stderr) decides bar or log lines by whether it
    is a terminal (``bar`` False: log lines always); ``clock`` is for tests.
    ``detail``, if set, ends each line; ``lines`` counts the lines logged.
    """

    def __init__(self, what: str, total: int | None = None, unit: str = "examples", *, show: bool = True,
                 every_s: float | None = None, stream=None, bar: bool = True, clock=time.monotonic):
        self.what, self.total, self.unit, self.show = what, total, unit, show
        self.every_s = _every_s() if every_s is None else every_s
        self.clock, self.done, self.detail, self.lines = clock, 0, "", 0
        self.start = self.last_line = clock()
        stream = sys.stderr if stream is None else stream
        self.bar = None
        if show and bar and stream.isatty():
            self.bar = tqdm.tqdm(total=total, desc=what, unit=f" {unit}", file=stream, dynamic_ncols=True)

    def line(self, final: bool = False) -> str:
        """``what: done/total unit (pct), rate unit/s, eta ...``; no total: done and rate; ``final``: the
        time taken instead of the ETA."""
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        done = f"{self.done}/{self.total} {self.unit} ({100 * self.done / self.total:.1f}%)" if self.total else \
            f"{self.done} {self.unit}"
        detail = f", {self.detail}" if self.detail else ""
        if final:
            return f"{self.what}: {done} in {format_duration(elapsed)}, {rate:.3g} {self.unit}/s{detail}"
        if not self.total:
            return f"{self.what}: {done}, {rate:.3g} {self.unit}/s{detail}"
        eta = format_duration(max(self.total - self.done, 0) / rate) if rate > 0 else "unknown"
        return f"{self.what}: {done}, {rate:.3g} {self.unit}/s, eta {eta}{detail}"

    def update(self, count: int = 1) -> None:
        """``count`` more units done; logs a line if ``every_s`` has passed since the last."""
        self.done += count
        if not self.show:
            return
        if self.bar is not None:
            self.bar.update(count)
        elif self.clock() - self.last_line >= self.every_s:
            self.last_line, self.lines = self.clock(), self.lines + 1
            logger.info("%s", self.line())

    def close(self) -> None:
        """The final line: what was done, in how long, at what overall rate."""
        if not self.show:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        logger.info("%s", self.line(final=True))
        self.show = False

    def counted(self, items: Iterable) -> Iterator:
        """``items``, each counted as one unit as it is taken."""
        for item in items:
            self.update()
            yield item

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def csv_rows(files: Iterable[str]) -> int:
    """The data rows of CSV files (local or URLs) with a header each: the total of a progress over them.

    Counts newlines in 16 MB blocks (about a second per GB); a newline quoted
    inside a cell counts as a row, which only moves the ETA.
    """
    rows = 0
    for file in files:
        lines, last = 0, b"\n"
        with paths.as_path(file).open("rb") as f:
            for block in iter(lambda: f.read(16 << 20), b""):
                lines, last = lines + block.count(b"\n"), block[-1:]
        rows += max(lines + (last != b"\n") - 1, 0)
    return rows
