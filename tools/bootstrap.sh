#!/usr/bin/env bash
# Create .venv (once) and install geor_jax with its test extra and the jax build of this platform into it.
#   bash tools/bootstrap.sh [--cpu]     -> .venv       (CPU jax; the default)
#   bash tools/bootstrap.sh --tpu       -> .venv       (jax[tpu]: libtpu, on TPU VMs)
#   bash tools/bootstrap.sh --cuda12    -> .venv       (jax[cuda12]: CUDA 12 plugin and wheels, on GPU hosts)
#   bash tools/bootstrap.sh beam        -> .venv-beam  (apache-beam: protobuf 6 / pillow 12 / pyarrow 25, see setup.py)
# Idempotent: a second run only re-checks the pins; a new platform flag swaps the jax plugins. torch (only for the
# parity tests) is the CPU build from PyTorch's CPU index on every platform: PyPI's Linux wheel is a CUDA build.
# PYTHON picks the interpreter (default python3; needs >= 3.11), VENV the folder, TORCH_INDEX the torch index.
set -euo pipefail
cd "$(dirname "$0")/.."
JAX_VERSION=0.10.2 TORCH_VERSION=2.13.0 TORCH_INDEX=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}
usage="usage: bash tools/bootstrap.sh [--cpu | --tpu | --cuda12] [beam]"
platform=cpu extra=test venv=.venv
for arg in "$@"; do
  case "$arg" in
    --cpu | --tpu | --cuda12) platform=${arg#--} ;;
    beam) extra=beam_test venv=.venv-beam ;;
    *) echo "bootstrap.sh: unknown argument '$arg'; $usage" >&2; exit 2 ;;
  esac
done
venv=${VENV:-$venv}
python=${PYTHON:-python3}
if ! command -v "$python" > /dev/null; then
  echo "bootstrap.sh: needs Python >= 3.11, but '$python' is not on PATH (set PYTHON=/path/to/python3.11)" >&2
  exit 2
fi
version=$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ "${version%%.*}" -ne 3 ] || [ "${version#*.}" -lt 11 ]; then
  echo "bootstrap.sh: needs Python >= 3.11, but $python is $version (e.g. apt-get install python3.11" \
       "python3.11-venv, then PYTHON=python3.11 bash tools/bootstrap.sh)" >&2
  exit 2
fi
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip
fi
pip=("$venv/bin/python" -m pip install -q)
has_cpu_torch="import importlib.metadata as m; assert m.version('torch') == '$TORCH_VERSION+cpu'"
if [ "$extra" = test ] && ! "$venv/bin/python" -c "$has_cpu_torch" 2> /dev/null; then
  # First, so the test extra's torch pin is then met. Few retries: where the index is unreachable (an offline mirror
  # with the wheel in pip's find-links) pip falls back in seconds instead of retrying for half a minute.
  "${pip[@]}" --retries 2 "torch==$TORCH_VERSION" --index-url "$TORCH_INDEX"
fi
"${pip[@]}" -e ".[$extra]"
case "$platform" in  # jax itself is pinned by setup.py; the plugins of other platforms are removed
  cpu) "$venv/bin/python" -m pip uninstall -q -y libtpu jax-cuda12-plugin jax-cuda12-pjrt 2> /dev/null || true ;;
  tpu) "$venv/bin/python" -m pip uninstall -q -y jax-cuda12-plugin jax-cuda12-pjrt 2> /dev/null || true
       "${pip[@]}" "jax[tpu]==$JAX_VERSION" ;;
  cuda12) "$venv/bin/python" -m pip uninstall -q -y libtpu 2> /dev/null || true
          "${pip[@]}" "jax[cuda12]==$JAX_VERSION" ;;
esac
echo "bootstrap.sh: $venv ready (python $version, jax $JAX_VERSION for $platform)"
