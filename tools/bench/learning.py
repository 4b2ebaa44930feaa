"""Does GRPO improve on SFT? The demo recipe over K seeds, paired on the same held-out images.

Each seed runs ``geor_jax.run.recipe.run_seed`` (launch/demo.py's six steps,
configs/demo.py's settings) with the recipe's GRPO (on the mined hard
records) and the paper's ablations: GRPO on as many random, unmined training
records, GRPO on the hard records without KL (beta 0), and GRPO on the random
records without KL (so mining and KL are each measured with the other on
and off). Every model answers the same held-out images, so each metric's
GRPO-minus-SFT difference is paired per image: per seed with its 95%
bootstrap interval over images, pooled (the mean over seeds, images
resampled jointly) and its spread over seeds (sample standard deviation of
the per-seed differences). Prints a markdown table per variant and the
issue's goal check; writes the figures to ``<root>/learning.json``.

    PYTHONPATH=. python tools/bench/learning.py --seeds=0,1,2,3,4     # 5 seeds, all variants
    PYTHONPATH=. python tools/bench/learning.py --seeds=0,1,2,3 --variants=hard --grpo_steps=40

Runs resume from their workdirs' checkpoints (as launch/train.py does); pass
a fresh ``--root`` for a clean measurement. ``--from_outputs`` trains and
evaluates nothing: it summarizes the seeds whose held-out predictions.csv
files are already under ``--root`` (a run cut short keeps its finished seeds).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import pathlib
import time

import numpy as np
from absl import app, flags

from geor_jax import geo, stats
from geor_jax.run import cli, recipe

_CONFIG_FILE = pathlib.Path(__file__).resolve().parents[2] / "configs" / "demo.py"

_ROOT = flags.DEFINE_string("root", "/tmp/geor_learning", "Working directory (data, one folder per seed).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of the runs (config.seed and config.data.seed).")
_VARIANTS = flags.DEFINE_list("variants", list(recipe.VARIANTS), f"GRPO variants, of {list(recipe.VARIANTS)}.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT steps of configs/demo.py.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", None, "Override the GRPO steps of configs/demo.py.")
_RESAMPLES = flags.DEFINE_integer("resamples", 4000, "Bootstrap resamples per interval.")
_FROM_OUTPUTS = flags.DEFINE_bool("from_outputs", False, "Summarize the predictions already under --root; run nothing.")

# Each metric as the table prints it: (label, scale).
LABELS = {"reward_mean": ("mean reward", 1), "acc@25km": ("acc@25km (points)", 100),
          "acc@200km": ("acc@200km (points)", 100), "acc@750km": ("acc@750km (points)", 100),
          "median_km": ("median km", 1)}


def load_demo_config():
    """configs/demo.py as a module (it is not a package)."""
    spec = importlib.util.spec_from_file_location("demo_config", _CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluation_from_predictions(path: str) -> recipe.Evaluation:
    """An evaluation as its predictions.csv recorded it; the per-image reward is the paper's reward of the
    recorded distance (0 for an invalid answer), as ``evaluate.evaluate_answers`` scores it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    distance = np.array([float(r["distance_km"]) for r in rows])
    valid = np.array([r["valid"] == "1" for r in rows])
    reward = np.where(valid, np.asarray(geo.distance_reward(np.where(valid, distance, 0.0).astype(np.float32))), 0.0)
    per_example = {"reward": reward.astype(np.float64), "distance_km": distance}
    metrics = {metric: float(fn(reward, distance, 0)) for metric, fn in stats.METRICS.items()}
    return recipe.Evaluation(metrics, per_example, [r["id"] for r in rows])


def seed_from_outputs(root: str, seed: int, variants) -> recipe.SeedResult:
    """One finished seed of an earlier run under ``root``, from its written predictions and mining summary."""
    run_dir = os.path.join(root, f"seed_{seed}")
    with open(os.path.join(run_dir, "hard_ids.txt.summary.json")) as f:
        mining = json.load(f)
    grpo = {v: evaluation_from_predictions(os.path.join(run_dir, f"grpo_{v}", "on_test", "predictions.csv"))
            for v in variants}
    return recipe.SeedResult(seed, evaluation_from_predictions(os.path.join(run_dir, "sft_on_test", "predictions.csv")),
                             grpo, mining, {})


def _stack(evaluations: list[recipe.Evaluation]) -> dict[str, np.ndarray]:
    """Per-image reward and distance of K runs on the same images as (N, K) arrays."""
    return {key: np.stack([e.per_example[key] for e in evaluations], axis=-1) for key in ("reward", "distance_km")}


def summarize(results: list[recipe.SeedResult], variant: str, num_resamples: int = 4000) -> dict:
    """GRPO ``variant`` minus SFT on the held-out images: per seed, pooled and the spread across seeds.

    Returns {metric: {"per_seed": [Interval], "pooled": Interval, "seed_sd": float, "sft": float, "grpo": float}}
    (``sft``/``grpo``: the metric's mean over seeds).
    """
    for r in results:
        if r.grpo[variant].ids != r.sft.ids or r.sft.ids != results[0].sft.ids:
            raise ValueError(f"seed {r.seed}: the {variant} and SFT evaluations cover different images")
    before, after = [r.sft for r in results], [r.grpo[variant] for r in results]
    per_seed = [stats.paired_differences(b.per_example, a.per_example, num_resamples=num_resamples)
                for b, a in zip(before, after)]
    pooled = stats.paired_differences(_stack(before), _stack(after), num_resamples=num_resamples)
    out = {}
    for metric in stats.METRICS:
        estimates = [s[metric].estimate for s in per_seed]
        out[metric] = {"per_seed": [s[metric] for s in per_seed], "pooled": pooled[metric],
                       "seed_sd": float(np.std(estimates, ddof=1)) if len(estimates) > 1 else float("nan"),
                       "sft": float(np.mean([b.metrics[metric] for b in before])),
                       "grpo": float(np.mean([a.metrics[metric] for a in after]))}
    return out


def goal_met(summary: dict) -> tuple[bool, bool]:
    """The issue's goal: (the reward gain's interval lies above 0 on every seed, acc@750km falls on no seed)."""
    return (all(i.low > 0 for i in summary["reward_mean"]["per_seed"]),
            all(i.estimate >= 0 for i in summary["acc@750km"]["per_seed"]))


def seed_line(result: recipe.SeedResult, variant: str) -> str:
    """One seed's paired differences, GRPO ``variant`` minus SFT, with their 95% intervals, on one line."""
    differences = stats.paired_differences(result.sft.per_example, result.grpo[variant].per_example)
    return ", ".join(f"{LABELS[m][0]} {_scaled(i, LABELS[m][1]).format(3 if m == 'reward_mean' else 1)}"
                     for m, i in differences.items())


def _scaled(interval: stats.Interval, scale: float) -> stats.Interval:
    return stats.Interval(interval.estimate * scale, interval.low * scale, interval.high * scale)


def table(summary: dict, seeds: list[int]) -> str:
    """One markdown row per metric: SFT and GRPO levels, each seed's difference [95% CI], pooled, seed sd."""
    head = ["metric", "SFT", "GRPO", *(f"seed {s}: GRPO - SFT [95% CI]" for s in seeds), "pooled [95% CI]", "seed sd"]
    rows = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for metric, (label, scale) in LABELS.items():
        s = summary[metric]
        digits = 3 if metric == "reward_mean" else 1
        level = (lambda v: f"{v * scale:.{digits}f}")
        cells = [label, level(s["sft"]), level(s["grpo"]), *(_scaled(i, scale).format(digits) for i in s["per_seed"]),
                 _scaled(s["pooled"], scale).format(digits), f"{s['seed_sd'] * scale:.{digits}f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _jsonable(summary: dict) -> dict:
    return {metric: {"per_seed": [vars(i) for i in s["per_seed"]], "pooled": vars(s["pooled"]),
                     **{k: s[k] for k in ("seed_sd", "sft", "grpo")}} for metric, s in summary.items()}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if unknown := sorted(set(_VARIANTS.value) - set(recipe.VARIANTS)):
        raise app.UsageError(f"--variants: unknown {unknown}; choose from {list(recipe.VARIANTS)}")
    seeds = [int(s) for s in _SEEDS.value]
    demo = load_demo_config()
    sft, grpo = demo.get_config("sft"), demo.get_config("grpo")
    for config, steps in ((sft, _SFT_STEPS.value), (grpo, _GRPO_STEPS.value)):
        if steps is not None:
            config.train.num_steps = steps
    started = time.perf_counter()
    cli.use_compilation_cache(sft.train.compilation_cache_dir, _ROOT.value)  # seeds and variants share programs
    results = []
    for seed in seeds:
        t = time.perf_counter()
        if _FROM_OUTPUTS.value:
            results.append(seed_from_outputs(_ROOT.value, seed, _VARIANTS.value))
            continue
        results.append(recipe.run_seed(demo.get_recipe(), sft, grpo, _ROOT.value, seed, variants=_VARIANTS.value,
                                       log=lambda line: print(line, flush=True)))
        print(f"seed {seed}: {time.perf_counter() - t:.0f} s", flush=True)
        for variant in _VARIANTS.value:  # printed as each seed ends: a cut run keeps its figures
            print(f"seed {seed}, {variant} minus SFT: " + seed_line(results[-1], variant), flush=True)
    world = demo.get_recipe().world
    lines = [f"{len(seeds)} seeds, {world.test_images} held-out images, {world.train_images} training images; "
             f"SFT {sft.train.num_steps} steps, GRPO {grpo.train.num_steps} steps "
             f"(lr {grpo.optimizer.learning_rate:g}, G {grpo.grpo.group_size}, "
             f"temperature {grpo.grpo.temperature:g}, beta {grpo.grpo.beta:g}); "
             + ("from the predictions under --root" if _FROM_OUTPUTS.value else
                f"total {time.perf_counter() - started:.0f} s; load average {os.getloadavg()[0]:.2f}")]
    lines += [f"seed {r.seed}: the SFT model solved {r.mining['hotspots']} of {r.mining['predictions']} training "
              f"images; hard records {r.mining['kept']}" for r in results]
    out = {}
    for variant in _VARIANTS.value:
        summary = summarize(results, variant, _RESAMPLES.value)
        reward_ok, acc750_ok = goal_met(summary)
        source, overrides = recipe.VARIANTS[variant]
        setting = ", ".join([f"{source} records", *(f"{k}={v}" for k, v in overrides.items())])
        lines += ["", f"### GRPO `{variant}` ({setting}) minus SFT", "", table(summary, seeds), "",
                  f"reward gain's interval above 0 on every seed: {'yes' if reward_ok else 'no'}; "
                  f"acc@750km falls on no seed: {'yes' if acc750_ok else 'no'}"]
        out[variant] = _jsonable(summary)
    print("\n" + "\n".join(lines), flush=True)
    with open(os.path.join(_ROOT.value, "learning.json"), "w") as f:
        json.dump({"seeds": seeds, "summary": out, "report": lines}, f, indent=1)


if __name__ == "__main__":
    cli.main(main)
