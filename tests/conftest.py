"""Test session set-up: 8 fake CPU devices for sharding tests, cheap compiles (tests/process_env.py).

XLA reads XLA_FLAGS once, when JAX first starts a backend, so this must run
before any test module imports jax.
"""

import os

import process_env

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + process_env.xla_flags(8)).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
