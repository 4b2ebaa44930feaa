#!/usr/bin/env bash
# Create .venv (once) and install geor_jax with its test extra into it.
# Idempotent: a second run only re-checks the pins. CPU torch comes from the
# pinned wheel (torch==2.13.0); an unpinned torch would pull a CUDA build.
#   bash tools/bootstrap.sh        -> .venv       (the test extra)
#   bash tools/bootstrap.sh beam   -> .venv-beam  (apache-beam: protobuf 6 / pillow 12 / pyarrow 25, see setup.py)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv extra=test
if [ "${1:-}" = beam ]; then venv=.venv-beam extra=beam_test; fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
"$venv/bin/python" -m pip install -q -e ".[$extra]"
