"""Entry points' error handling and logging: a config or usage error is one line on stderr and exit status 2.

``main(fn)`` replaces ``absl.app.run(fn)`` in the launch scripts and tools:
flag parsing errors (unknown ``--config.x`` keys, bad values, missing
required flags) and the ``ConfigError`` / ``UsageError`` that ``fn`` raises
print ``<script>: <message>`` without a traceback; other errors propagate.
Logging: geor_jax's own lines (progress) at INFO, other libraries' (orbax
and tfds log every step at INFO) at WARNING, unless ``--verbosity`` is given.
``distributed_flags`` gives a launch script the multi-node GPU flags
(``launch/gpu.sh`` passes them), ``use_compilation_cache`` turns on JAX's
persistent compilation cache.
"""

from __future__ import annotations

import functools
import logging as std_logging
import os
import sys

import jax
from absl import app, flags, logging

from geor_jax import paths, sharding
from geor_jax.config_fields import ConfigError


def _fail(error: Exception) -> None:
    message = " ".join(str(error).split()) or type(error).__name__
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    # ml_collections' config flags raise KeyError / AttributeError / TypeError / ValueError for a bad
    # ``--config.x=...`` (unknown key, wrong type): while parsing, every one of them is a usage error.
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as error:
        _fail(error)


def main(fn) -> None:
    """Run ``fn(argv)`` as ``absl.app.run`` does, with one-line errors for bad flags and configs."""

    @functools.wraps(fn)
    def guarded(argv):
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
            std_logging.getLogger("geor_jax").setLevel(std_logging.INFO)
        try:
            return fn(argv)
        except (ConfigError, app.UsageError) as error:
            _fail(error)

    app.run(guarded, flags_parser=_parse_flags)


def use_compilation_cache(directory: str, workdir: str) -> str | None:
    """Keep compiled programs in ``directory`` (relative: under ``workdir``; may be a URL; "": off), so a
    restarted or repeated run skips recompiling. Returns the folder used."""
    if not directory:
        return None
    folder = directory if paths.is_url(directory) or os.path.isabs(directory) else str(
        paths.as_path(workdir) / directory)
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder


def distributed_flags():
    """Define ``--coordinator_address`` / ``--num_processes`` / ``--process_id``; returns the function that
    joins the run with them (``sharding.initialize_distributed``: TPU pods, Slurm and MPI need none)."""
    coordinator = flags.DEFINE_string("coordinator_address", None, "Multi-node GPU: host:port of process 0.")
    processes = flags.DEFINE_integer("num_processes", None, "Multi-node GPU: number of processes.")
    process_id = flags.DEFINE_integer("process_id", None, "Multi-node GPU: this process's index.")
    return lambda: sharding.initialize_distributed(coordinator.value, processes.value, process_id.value)
