"""run.profiling.StepProfiler: a trace of the chosen steps in the workdir, Python calls in it only when asked."""

import re

import jax
import jax.numpy as jnp
import pytest

from geor_jax.run import profiling


def a_distinctly_named_python_call(x):
    return x + 1


@pytest.mark.parametrize("python", [False, True])
def test_the_trace_holds_python_calls_only_when_asked(tmp_path, python):
    step_fn = jax.jit(lambda x: (x @ x).sum())
    x = jnp.ones((64, 64))
    profiler = profiling.StepProfiler((2, 3), str(tmp_path), python=python)
    for step in range(1, 5):
        profiler.before(step)
        outputs = step_fn(a_distinctly_named_python_call(x))
        profiler.after(step, outputs)
    traces = list((tmp_path / profiling.PROFILE_DIR).glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1  # steps 2-3, once
    data = traces[0].read_bytes()
    assert b"jit(<lambda>)" in data or b"jit__lambda" in data  # the step itself is in both
    # The Python tracer's events read "$<file>:<line> <function>" (the name alone is also in XLA's op metadata).
    python_events = re.findall(rb"\$[^\x00-\x1f]*:\d+ a_distinctly_named_python_call", data)
    assert bool(python_events) == python
