"""The README's main job: the Geo-R recipe end to end on the embedded demo world, offline, on a CPU.

1. records of the demo world (procedural geotagged images of real places): train, held-out test, a tokenizer;
2. SFT of a tiny Qwen2.5-VL-shaped model on the Chain-of-Region answers;
3. the SFT model on the training set (predictions.csv, as launch/evaluate.py writes it);
4. hard samples: the training ids far from every place it solved (tools/mine_hard.py);
5. their records (tools/build_dataset.py --from_records --ids), and GRPO on them with the Haversine reward;
6. SFT and SFT + GRPO on the held-out images: the report, with 95% paired bootstrap intervals.

Each step calls the library functions the launch scripts and tools call (``geor_jax.run.recipe``).

  .venv/bin/python launch/demo.py [--root=/tmp/geor_demo] [--seed=0] [--sft_steps=N --grpo_steps=N]
"""

import importlib.util
import json
import os
import pathlib
import shutil
import time

from absl import app, flags

from geor_jax import evaluate, stats
from geor_jax.run import cli, recipe

_CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
_spec = importlib.util.spec_from_file_location("demo_config", _CONFIG_FILE)
demo_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_config)

_ROOT = flags.DEFINE_string("root", demo_config.DEMO_ROOT, "Working directory of the demo.")
_SEED = flags.DEFINE_integer("seed", 0, "config.seed and config.data.seed of both stages.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT steps of configs/demo.py.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", None, "Override the GRPO steps of configs/demo.py.")

# How each paired difference prints: (label, scale, digits, unit).
_DIFFERENCES = {"reward_mean": ("mean reward", 1, 3, ""), "acc@25km": ("acc@25km", 100, 1, " points"),
                "acc@200km": ("acc@200km", 100, 1, " points"), "acc@750km": ("acc@750km", 100, 1, " points"),
                "median_km": ("median error", 1, 0, " km")}


def stage_dict(stage: str, steps: int | None):
    """configs/demo.py's section for ``stage``, with the steps overridden if given."""
    config = demo_config.get_config(stage)
    if steps is not None:
        config.train.num_steps = steps
    return config


def difference_lines(before: recipe.Evaluation, after: recipe.Evaluation) -> list[str]:
    """One line per metric: the paired difference after - before and its 95% bootstrap interval over images."""
    intervals = stats.paired_differences(before.per_example, after.per_example)
    lines = []
    for metric, (label, scale, digits, unit) in _DIFFERENCES.items():
        i = intervals[metric]
        scaled = stats.Interval(i.estimate * scale, i.low * scale, i.high * scale)
        verdict = "excludes 0" if i.excludes_zero else "includes 0"
        lines.append(f"  {label:<13} {scaled.format(digits)}{unit} ({verdict})")
    return lines


def reward_curve(workdir: str) -> list[tuple[int, float]]:
    """(step, mean reward of the sampled groups) from a GRPO run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(row["step"], row["reward_mean"]) for row in rows if row["split"] == "train" and "reward_mean" in row]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    root, seed = _ROOT.value, _SEED.value
    started = time.perf_counter()
    cli.use_compilation_cache(demo_config.get_config("sft").train.compilation_cache_dir, root)  # steps share programs
    for stale in (f"seed_{seed}", "report"):
        shutil.rmtree(os.path.join(root, stale), ignore_errors=True)  # a fresh run each time; the world is kept
    result = recipe.run_seed(demo_config.get_recipe(), stage_dict("sft", _SFT_STEPS.value),
                             stage_dict("grpo", _GRPO_STEPS.value), root, seed,
                             log=lambda line: print(line, flush=True))
    grpo = result.grpo["hard"]
    runs = {"SFT": (result.sft.metrics, result.sft.per_example), "SFT + GRPO": (grpo.metrics, grpo.per_example)}
    report = evaluate.write_outputs(os.path.join(root, "report"), runs,
                                    title="Demo world, held-out images: before and after GRPO")
    m = result.mining
    count = len(result.sft.ids)
    curve = reward_curve(os.path.join(root, f"seed_{seed}", "grpo_hard"))
    lines = [report,
             f"Hard mining: the SFT model placed {m['hotspots']} of {m['predictions']} training images within "
             f"{m['correct_km']:g} km; {m['kept']} training images lie farther than {m['radius_km']:g} km from all of "
             f"them: GRPO's records.",
             "GRPO mean reward of sampled groups (hard records): "
             + ", ".join(f"step {step}: {reward:.3f}" for step, reward in curve),
             f"Held-out paired difference, SFT + GRPO minus SFT, on {count} images, seed {seed} "
             "(95% bootstrap interval over images):",
             *difference_lines(result.sft, grpo),
             f"Outputs in {os.path.join(root, 'report')} (report.md, metrics.json, error_cdf.png, world_*.png); "
             f"total {time.perf_counter() - started:.0f} s"]
    print("\n" + "\n".join(lines), flush=True)
    with open(os.path.join(root, "report", "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.main(main)
