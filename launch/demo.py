"""The README's main job: Geo-R end to end on the embedded demo world, offline, on a CPU.

1. Build the demo world (procedural geotagged images of real places) as CoR
   records, a held-out test split and a small BPE tokenizer.
2. SFT a tiny Qwen2.5-VL-shaped model on the Chain-of-Region answers.
3. GRPO from the SFT checkpoint with the Geo-R Haversine reward.
4. Evaluate both on the held-out images and print the before/after report.

  .venv/bin/python launch/demo.py [--root=/tmp/geor_demo] [--sft_steps=300 --grpo_steps=60]
"""

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import time

import jax
import numpy as np
from absl import app, flags, logging

from geor_jax import evaluate, rewards, sampling
from geor_jax.data import demo_world, pipeline
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.run import build, cli, loop
from geor_jax.run import config as run_config

_CONFIG_FILE = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
_spec = importlib.util.spec_from_file_location("demo_config", _CONFIG_FILE)
demo_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_config)

_ROOT = flags.DEFINE_string("root", demo_config.DEMO_ROOT, "Working directory of the demo.")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", None, "Override the SFT steps of configs/demo.py.")
_GRPO_STEPS = flags.DEFINE_integer("grpo_steps", None, "Override the GRPO steps of configs/demo.py.")
_TRAIN_IMAGES, _TEST_IMAGES = 400, 64
# (height, width) of the demo photos, one drawn per photo: square, 2:1 landscape, 1:2 portrait. Each keeps its
# shape (native resolution: 64, 72 and 72 patches), so the runs compile two batch shapes.
IMAGE_SIZES = ((112, 112), (84, 168), (168, 84))


def stage_config(stage: str, root: str, steps: int | None) -> run_config.RunConfig:
    """configs/demo.py for one stage, with every path under ``root``, resolved."""
    config = demo_config.get_config(stage)
    data_dir = os.path.join(root, "data")
    config.data.records_dir = os.path.join(data_dir, f"geo_cor_records/{_records_name('train')}/1.1.0")
    config.data.tokenizer_dir = os.path.join(data_dir, "demo_tokenizer")
    config.eval.records_dir = os.path.join(data_dir, f"geo_cor_records/{_records_name('test')}/1.1.0")
    if steps is not None:
        config.train.num_steps = steps
    if stage == "grpo":
        config.model.init_from = os.path.join(root, "sft", "hf")
    return run_config.resolve(config, jax.device_count())


def _records_name(split: str) -> str:
    count, seed = (_TRAIN_IMAGES, 0) if split == "train" else (_TEST_IMAGES, 1)
    return f"demo_sizes_{count}_{seed}_{split}"


def build_data(data_dir: str) -> None:
    """Demo records (train and held-out test) and the demo tokenizer (with its chat template), unless built."""
    tokenizer_dir = os.path.join(data_dir, "demo_tokenizer")
    if (not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json"))
            or not tokenizer_lib.load_tokenizer(tokenizer_dir).hf.chat_template):  # built before chat templates
        tokenizer_lib.build_demo_tokenizer(tokenizer_dir, vocab_size=2048)
    for split, count, seed in (("train", _TRAIN_IMAGES, 0), ("test", _TEST_IMAGES, 1)):
        demo_world.build_demo_records(data_dir, os.path.join(data_dir, f"demo_world_sizes_{split}"), num_images=count,
                                      seed=seed, split=split, sizes=IMAGE_SIZES, config_name=_records_name(split))


def evaluate_checkpoint(config, hf_dir: str, mesh, samples: int = 4):
    """A stage's exported checkpoint on the held-out split: ((metrics, per-example) of greedy
    answers, mean reward of ``samples`` sampled answers per image at the GRPO temperature)."""
    model, tokenizer = build.load_policy(config.model, hf_dir, config.data.tokenizer_dir, mesh)
    e = config.eval
    data = build.eval_pipeline(config.data, e.records_dir, e.split, e.batch_size)
    metrics, per_example, _ = evaluate.evaluate_policy(model, tokenizer, data, e, mesh)
    data = dataclasses.replace(data, num_records=e.num_examples or None)  # the records evaluate_policy read
    with jax.set_mesh(mesh):
        sampled = sampled_rewards(model, tokenizer, pipeline.make_iterator(data, mesh), config, mesh, samples)
    return (metrics, per_example), float(np.mean(sampled))


def sampled_rewards(model, tokenizer, batches, config, mesh, samples: int) -> np.ndarray:
    """Geo-R rewards of ``samples`` answers per held-out image, drawn as GRPO draws them."""
    sampling_config = sampling.SamplingConfig(
        max_new_tokens=config.eval.max_new_tokens, temperature=config.grpo.temperature,
        stop_tokens=tokenizer.special_ids.eos, pad_id=tokenizer.special_ids.pad)
    out = []
    for index, batch in enumerate(batches):
        a = batch.arrays
        rollout = sampling.sample_groups(model, batch.prompts(), jax.random.key(index), sampling_config,
                                         group_size=samples, mesh=mesh)
        keep = np.repeat(np.asarray(a["example_mask"]) == 1, samples)
        scored = rewards.score_completions(sampling.decode_completions(tokenizer, rollout),
                                           np.repeat(np.asarray(a["lat"]), samples),
                                           np.repeat(np.asarray(a["lon"]), samples))
        out.append(scored.reward[keep])
    return np.concatenate(out)


def reward_curve(workdir: str) -> list[tuple[int, float]]:
    """(step, mean reward of the sampled groups) from a GRPO run's metrics.jsonl."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [(row["step"], row["reward_mean"]) for row in rows if row["split"] == "train" and "reward_mean" in row]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax and tfds log every step at INFO
    root = _ROOT.value
    started = time.perf_counter()
    for stage in ("sft", "grpo", "report"):
        shutil.rmtree(os.path.join(root, stage), ignore_errors=True)  # a fresh run each time; data is kept
    sft_config = stage_config("sft", root, _SFT_STEPS.value)
    grpo_config = stage_config("grpo", root, _GRPO_STEPS.value)

    print("== 1/4 demo world records and tokenizer", flush=True)
    build_data(os.path.join(root, "data"))
    print(f"== 2/4 SFT on Chain-of-Region answers ({sft_config.train.num_steps} steps)", flush=True)
    loop.run(sft_config, os.path.join(root, "sft"))
    print(f"== 3/4 GRPO with the Haversine reward ({grpo_config.train.num_steps} steps)", flush=True)
    loop.run(grpo_config, os.path.join(root, "grpo"))
    print("== 4/4 evaluation on held-out demo images", flush=True)
    mesh = sft_config.mesh.make()
    results = {name: evaluate_checkpoint(sft_config, os.path.join(root, stage, "hf"), mesh)
               for name, stage in (("SFT", "sft"), ("SFT + GRPO", "grpo"))}
    runs = {name: greedy for name, (greedy, _) in results.items()}
    report = evaluate.write_outputs(os.path.join(root, "report"), runs,
                                    title="Demo world, held-out images: before and after GRPO")
    curve = reward_curve(os.path.join(root, "grpo"))
    lines = [report, "GRPO mean reward of sampled groups (train): "
             + ", ".join(f"step {step}: {reward:.3f}" for step, reward in curve)]
    for label, (before, after) in (
        ("greedy answer", (runs["SFT"][0]["reward_mean"], runs["SFT + GRPO"][0]["reward_mean"])),
        ("4 sampled answers at the GRPO temperature", (results["SFT"][1], results["SFT + GRPO"][1])),
    ):
        lines.append(f"Held-out mean reward, {label} per image: SFT {before:.3f} -> SFT + GRPO {after:.3f} "
                     f"({after - before:+.3f})")
    lines.append(f"Outputs in {os.path.join(root, 'report')} (report.md, metrics.json, error_cdf.png, world_*.png); "
                 f"total {time.perf_counter() - started:.0f} s")
    print("\n" + "\n".join(lines), flush=True)
    with open(os.path.join(root, "report", "summary.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    cli.main(main)
