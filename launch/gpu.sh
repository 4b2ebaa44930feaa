#!/usr/bin/env bash
# Run a geor_jax command on a GPU host, or as one process of a multi-node GPU run.
#
# One host, all its GPUs (one process drives every local GPU):
#   launch/gpu.sh launch/train.py --config=configs/geor_7b_grpo.py:gpu8 --workdir=/ckpt/grpo
#
# Several nodes: the same command on every node, with the coordinator (node 0,
# any free port), the number of nodes and this node's rank:
#   COORDINATOR=node0:1234 NUM_PROCESSES=2 PROCESS_ID=0 launch/gpu.sh launch/train.py ...
#   COORDINATOR=node0:1234 NUM_PROCESSES=2 PROCESS_ID=1 launch/gpu.sh launch/train.py ...
# (Under Slurm or Open MPI the variables can be left out: they are detected.)
# Install once, with the CUDA 12 build of jax: bash tools/bootstrap.sh --cuda12
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: [COORDINATOR=host:port NUM_PROCESSES=N PROCESS_ID=i] $0 SCRIPT [ARGS...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
script=$1
shift
multi_node=()
if [ -n "${COORDINATOR:-}" ]; then
  multi_node=(--coordinator_address="$COORDINATOR" --num_processes="${NUM_PROCESSES:?set NUM_PROCESSES}"
              --process_id="${PROCESS_ID:?set PROCESS_ID}")
fi
# Let XLA use most of each GPU's memory (the default preallocates 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec .venv/bin/python "$script" "$@" "${multi_node[@]}"
