"""A JAX profiler trace of chosen training steps (``train.profile_steps=first,last``), into the workdir.

TensorBoard's profile plugin (or XProf) reads ``<workdir>/profile``. The
profiler writes local files, so a URL workdir gets the trace uploaded when it
stops.
"""

from __future__ import annotations

import shutil
import tempfile

import jax

from geor_jax import paths

PROFILE_DIR = "profile"


def check_steps(steps: tuple[int, ...]) -> str | None:
    """``train.profile_steps``: () for none, or (first, last) with 1 <= first <= last."""
    if not steps:
        return None
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
        return f"must be first,last with 1 <= first <= last (e.g. 10,12), got {steps!r}"
    return None


class StepProfiler:
    """Starts the trace before step ``first`` and stops it once step ``last`` has run; ``python`` also traces
    Python calls."""

    def __init__(self, steps: tuple[int, ...], workdir: str, python: bool = False):
        self.steps, self.target = steps, paths.as_path(workdir) / PROFILE_DIR
        self.options = jax.profiler.ProfileOptions()
        self.options.python_tracer_level = 1 if python else 0
        self.local = None

    def before(self, step: int) -> None:
        """Call before running ``step``."""
        if self.steps and step == self.steps[0]:
            self.local = tempfile.mkdtemp(prefix="geor_jax_profile_") if paths.is_url(self.target) else str(self.target)
            jax.profiler.start_trace(self.local, profiler_options=self.options)

    def after(self, step: int, outputs) -> None:
        """Call after ``step`` with its outputs (waited for, so the trace holds the whole step)."""
        if self.local is None or step != self.steps[1]:
            return
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        if self.local != str(self.target):
            paths.copy_tree(self.local, self.target)
            shutil.rmtree(self.local, ignore_errors=True)
        print(f"profile of steps {self.steps[0]}-{self.steps[1]} written to {self.target}", flush=True)
        self.local = None
