"""Evaluate a checkpoint on a split of CoR records: metrics JSON, Markdown report, plots.

  .venv/bin/python launch/evaluate.py --config=configs/demo.py:sft \\
      --hf_dir=/tmp/geor_demo/grpo/hf --output_dir=/tmp/geor_demo/eval \\
      [--config.eval.records_dir=... --config.eval.split=test --config.eval.num_examples=0]

The model comes from a HF checkpoint directory (one that ``launch/train.py``
exported, or a downloaded Qwen2.5-VL); the config gives the mesh, data and
eval settings. Every example of the split is evaluated exactly once across
hosts (``eval.num_examples``, default 0: all). Process 0 writes metrics.json,
report.md, error_cdf.png, world_<name>.png and predictions.csv (per image,
all hosts'; ``tools/mine_hard.py --predictions`` reads it) to ``output_dir``
(local or a URL), with JAX's compilation cache under it
(``train.compilation_cache_dir``).
"""

import jax
from absl import app, flags
from ml_collections import config_flags

from geor_jax import evaluate, paths
from geor_jax.run import build, cli
from geor_jax.run import config as run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file for mesh, data and eval settings.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint directory of the model to evaluate.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the metrics, report and plots go.")
_NAME = flags.DEFINE_string("name", "model", "Name of this model in the report.")
_JOIN = cli.distributed_flags()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _JOIN()
    config = run_config.resolve(_CONFIG.value, jax.device_count())
    cli.use_compilation_cache(config.train.compilation_cache_dir, _OUTPUT_DIR.value)
    mesh = config.mesh.make()
    model, tokenizer = build.load_policy(config.model, _HF_DIR.value, config.data.tokenizer_dir, mesh)
    e = config.eval
    if not e.records_dir:
        raise app.UsageError("--config.eval.records_dir: must be set to evaluate")
    data = build.eval_pipeline(config.data, e.records_dir, e.split, e.batch_size)
    paths.as_path(_OUTPUT_DIR.value).mkdir(parents=True, exist_ok=True)
    metrics, per_example, _ = evaluate.evaluate_policy(  # process 0 writes predictions.csv as batches are scored
        model, tokenizer, data, e, mesh, predictions_path=str(paths.as_path(_OUTPUT_DIR.value) / "predictions.csv"))
    if jax.process_index() == 0:
        report = evaluate.write_outputs(_OUTPUT_DIR.value, {_NAME.value: (metrics, per_example)},
                                        title=f"{_NAME.value} on {config.eval.split}")
        print(report)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "hf_dir", "output_dir"])
    cli.main(main)
