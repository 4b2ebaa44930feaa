"""Evaluate a checkpoint on a split of CoR records: metrics JSON, Markdown report, plots.

  .venv/bin/python launch/evaluate.py --config=configs/demo.py:sft \\
      --hf_dir=/tmp/geor_demo/grpo/hf --output_dir=/tmp/geor_demo/eval \\
      [--config.eval.records_dir=... --config.eval.split=test --config.eval.num_examples=3000]

The model comes from a HF checkpoint directory (one that ``launch/train.py``
exported, or a downloaded Qwen2.5-VL); the config gives the mesh, data and
eval settings. Writes metrics.json, report.md, error_cdf.png, world_<name>.png
and predictions.csv (per image; ``tools/mine_hard.py --predictions`` reads it).
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from geor_jax import evaluate, sharding, train_loop
from geor_jax.data import pipeline
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.models import qwen2_5_vl as qvl

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file for mesh, data and eval settings.")
_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint directory of the model to evaluate.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the metrics, report and plots go.")
_NAME = flags.DEFINE_string("name", "model", "Name of this model in the report.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every step at INFO
    config = _CONFIG.value
    sharding.initialize_distributed()
    mesh = sharding.make_mesh(**config.mesh)
    tokenizer = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    model = qvl.load_hf_checkpoint(_HF_DIR.value, mesh=mesh, dtype=train_loop.DTYPES[config.model.dtype],
                                   param_dtype=train_loop.DTYPES[config.model.param_dtype])
    e = config.eval
    data = train_loop.pipeline_config(config, e.records_dir, e.split, e.batch_size, train=False)
    with jax.set_mesh(mesh):
        answers = evaluate.generate_answers(model, tokenizer, pipeline.make_iterator(data, mesh), e.max_new_tokens,
                                            mesh=mesh, max_examples=e.num_examples)
    result = evaluate.evaluate_answers(answers["texts"], answers["lat"], answers["lon"], answers["regions"])
    report = evaluate.write_outputs(_OUTPUT_DIR.value, {_NAME.value: result}, title=f"{_NAME.value} on {e.split}")
    if answers["ids"] is not None:
        evaluate.write_predictions(os.path.join(_OUTPUT_DIR.value, "predictions.csv"), answers["ids"], result[1])
    print(report)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config", "hf_dir", "output_dir"])
    app.run(main)
