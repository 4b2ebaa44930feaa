"""Test session set-up: 8 fake CPU devices for sharding tests, cheap compiles (tests/process_env.py).

XLA reads XLA_FLAGS once, when JAX first starts a backend, so this must run
before any test module imports jax.
"""

import os

import process_env

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + process_env.xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def pytest_collection_modifyitems(items):
    """Slow tests first (a stable sort): with ``-n 2`` the workers then end together, instead of one waiting
    out a two-minute launch test that happened to be scheduled last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
