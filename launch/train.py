"""Train one Geo-R stage (SFT or GRPO) from a config; resumes from the workdir's newest checkpoint.

The same command on a laptop CPU, a TPU VM, every worker of a TPU pod
(launch/tpu_pod.sh) and a GPU host (launch/gpu.sh):

  .venv/bin/python launch/train.py --config=configs/demo.py:sft --workdir=/tmp/geor_demo/sft \\
      [--config.train.num_steps=100 ...]

A config or usage error prints one line and exits with status 2, before
anything is written to the workdir.
"""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from geor_jax import sharding
from geor_jax.run import cli, loop
from geor_jax.run import config as run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/demo.py:sft).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, logs and the exported HF checkpoint go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-node GPU: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-node GPU: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-node GPU: this process's index.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every step at INFO
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = run_config.resolve(_CONFIG.value, jax.device_count())
    loop.run(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.main(main)
