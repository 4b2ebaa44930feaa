"""Train one Geo-R stage (SFT or GRPO) from a config; resumes from the workdir's newest checkpoint.

The same command on a laptop CPU, a TPU VM, every worker of a TPU pod
(launch/tpu_pod.sh) and a GPU host (launch/gpu.sh):

  .venv/bin/python launch/train.py --config=configs/demo.py:sft --workdir=/tmp/geor_demo/sft \\
      [--config.train.num_steps=100 ...]

A config or usage error prints one line and exits with status 2, before
anything is written to the workdir.
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from geor_jax.run import cli, loop
from geor_jax.run import config as run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (e.g. configs/demo.py:sft).")
_WORKDIR = flags.DEFINE_string("workdir", None,
                                "Checkpoints, logs and the exported HF checkpoint go here (local or a URL).")
_JOIN = cli.distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _JOIN()
    config = run_config.resolve(_CONFIG.value, jax.device_count())
    cli.use_compilation_cache(config.train.compilation_cache_dir, _WORKDIR.value)
    loop.run(config, _WORKDIR.value)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "workdir"])
    cli.main(main)
