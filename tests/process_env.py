"""The environment of every test process: fake CPU devices, compiles that skip XLA's slow optimizations, and
for launched scripts no torch.

Compiling is ~80% of the compile-heavy tests' time on CPU (jax.monitoring's backend compile events: 387 of
481 s in test_sft, test_logprobs, test_sampling and test_grpo_step). At backend optimization level 0 with
LLVM's expensive passes off, those compiles took 26% less CPU time in a side-by-side run. The programs
compute the same functions; every tolerance and bitwise comparison in the suite holds under these flags
(a resumed run is compared with a straight run compiled the same way). Benchmarks never use them.
"""

import os
import pathlib

COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
WITHOUT_TORCH = str(pathlib.Path(__file__).resolve().parent / "without_torch")  # its sitecustomize blocks torch


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with ``devices`` fake CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"


def launched(devices: int, **extra: str) -> dict:
    """The environment of a launch script a test runs: ``devices`` fake CPU devices, no torch (as in a
    user's install, where it is not a dependency), and ``extra``."""
    return dict(os.environ, XLA_FLAGS=xla_flags(devices), JAX_PLATFORMS="cpu", PYTHONPATH=WITHOUT_TORCH, **extra)
