#!/usr/bin/env bash
# Run a geor_jax command on every worker of a Cloud TPU VM pod slice.
#
#   launch/tpu_pod.sh TPU_NAME ZONE launch/train.py --config=configs/geor_7b_sft.py:tpu_v5p --workdir=gs://bucket/sft
#
# Every worker runs the same command from a checkout at the same path
# (REPO_DIR, default: this checkout's path); jax.distributed.initialize()
# reads the pod topology by itself (sharding.initialize_distributed detects
# TPU_WORKER_HOSTNAMES), each host feeds its own slice of every batch, and
# process 0 writes logs. Set up each worker once with:
#   launch/tpu_pod.sh TPU_NAME ZONE --setup
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE (--setup | SCRIPT [ARGS...])" >&2
  exit 2
fi
tpu_name=$1 zone=$2
shift 2
repo_dir=${REPO_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
if [ "$1" = "--setup" ]; then
  remote="cd $repo_dir && bash tools/bootstrap.sh --tpu"
else
  remote="cd $repo_dir && .venv/bin/python $(printf '%q ' "$@")"
fi
gcloud compute tpus tpu-vm ssh "$tpu_name" --zone="$zone" --worker=all --command="$remote"
