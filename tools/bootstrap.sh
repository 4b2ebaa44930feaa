#!/usr/bin/env bash
# Create .venv (once) and install geor_jax with its test extra into it.
# Idempotent: a second run only re-checks the pins. CPU torch comes from the
# pinned wheel (torch==2.13.0); an unpinned torch would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e '.[test]'
