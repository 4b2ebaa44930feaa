"""Counting XLA compilations of a jitted function, and the placement of a state's leaves."""

from __future__ import annotations

import contextlib

import jax

# jax.monitoring's event for one XLA compilation; its ``fun_name`` is "jit(<function name>)".
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles(jitted):
    """Yield a list that gets one entry (the seconds spent) per XLA compilation of ``jitted`` in the block.

    Counts compilations, the cost that matters, through the public
    ``jax.monitoring`` listener: a tracing counter misses a second compile
    of the same trace for inputs placed differently, and ``_cache_size()``
    is private.
    """
    compiles = []

    def listener(event, duration_secs, **kwargs):
        if event == BACKEND_COMPILE_EVENT and kwargs.get("fun_name") == f"jit({jitted.__name__})":
            compiles.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def placements(tree) -> dict[str, tuple]:
    """Each leaf's jit cache key parts (sharding, dtype, weak type, committed) by path: equal dicts, one compile."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): (x.sharding, x.dtype, x.weak_type, x.committed) for path, x in flat}
