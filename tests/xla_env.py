"""The XLA flags of every test process: fake CPU devices, and compiles that skip XLA's slow optimizations.

Compiling is ~80% of the compile-heavy tests' time on CPU (jax.monitoring's backend compile events: 387 of
481 s in test_sft, test_logprobs, test_sampling and test_grpo_step). At backend optimization level 0 with
LLVM's expensive passes off, those compiles took 26% less CPU time in a side-by-side run. The programs
compute the same functions; every tolerance and bitwise comparison in the suite holds under these flags
(a resumed run is compared with a straight run compiled the same way). Benchmarks never use them.
"""

COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS for a test process with ``devices`` fake CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {COMPILE_FLAGS}"
