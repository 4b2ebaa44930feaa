"""The Geo-R recipe end to end on the demo world, through the code README's real-data workflow runs.

1. records: the demo world's train and held-out splits (``tools/build_dataset.py --demo``'s builder);
2. SFT on Chain-of-Region answers (``launch/train.py``: ``loop.run``);
3. the SFT model on the training set, as ``launch/evaluate.py`` evaluates it: ``predictions.csv``;
4. MP16-Hard mining of those predictions (``tools/mine_hard.py``: ``hard_mining.mine_to_file``); fewer
   hard images than one GRPO batch stop the run with a ValueError;
5. the hard records (``tools/build_dataset.py --from_records=... --ids=...``: ``builder.build_records``),
   then GRPO on them from the SFT export (``loop.run``);
6. both exports on the held-out images (``launch/evaluate.py`` again), paired per image.

``launch/demo.py`` runs it once; ``tools/bench/learning.py`` runs it over seeds
and with the paper's ablations (``VARIANTS``: GRPO on random unmined records
of the same size, GRPO without KL, and both at once). One ``seed`` sets a
run's ``config.seed`` (model init, sampling) and ``config.data.seed``
(shuffling); the world is fixed by the recipe config, so every seed is
scored on the same images.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import numpy as np

from geor_jax import evaluate
from geor_jax.data import builder, demo_world, hard_mining
from geor_jax.data import tokenizer as tokenizer_lib
from geor_jax.run import build, loop
from geor_jax.run import config as run_config

# GRPO variants: name -> (records the run trains on, config overrides). "hard" is the recipe.
VARIANTS = {
    "hard": ("hard", {}),
    "random": ("random", {}),  # as many records as the hard set, drawn from the whole training set
    "no_kl": ("hard", {"grpo.beta": 0.0}),
    "random_no_kl": ("random", {"grpo.beta": 0.0}),  # with the two above: mining and KL, each on and off
}


@dataclasses.dataclass(frozen=True)
class World:
    """Where a recipe's data lives (``build_world``): records of both splits and the tokenizer."""

    data_dir: str
    train: str
    test: str
    tokenizer: str


@dataclasses.dataclass
class Evaluation:
    """A checkpoint's greedy answers on a split: metrics and per-image arrays (``evaluate.evaluate_answers``)."""

    metrics: dict
    per_example: dict
    ids: list[str]


def build_world(data_dir: str, recipe) -> World:
    """The demo world's records (train: world seed 0, held-out test: seed 1) and tokenizer, unless built."""
    w = recipe.world
    tokenizer_dir = os.path.join(data_dir, "demo_tokenizer")
    if (not os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json"))
            or not tokenizer_lib.load_tokenizer(tokenizer_dir).hf.chat_template):  # built before chat templates
        tokenizer_lib.build_demo_tokenizer(tokenizer_dir, vocab_size=w.vocab_size)
    dirs = {}
    for split, count, seed in (("train", w.train_images, 0), ("test", w.test_images, 1)):
        dirs[split], _ = demo_world.build_demo_records(
            data_dir, os.path.join(data_dir, f"demo_world_sizes_{split}_{count}"), num_images=count, seed=seed,
            split=split, sizes=tuple(map(tuple, w.image_sizes)), config_name=f"demo_sizes_{count}_{seed}_{split}")
    return World(data_dir, dirs["train"], dirs["test"], tokenizer_dir)


def stage_config(config_dict, world: World, records_dir: str, seed: int, init_from: str = "",
                 overrides: dict | None = None) -> run_config.RunConfig:
    """A stage's config file section with the recipe's paths, ``seed`` and dotted ``overrides``, resolved.

    The training loop's own held-out evaluation is off: step 6 evaluates every export on the same images.
    """
    c = config_dict.copy_and_resolve_references()
    c.data.records_dir, c.data.tokenizer_dir = records_dir, world.tokenizer
    c.eval.records_dir = ""
    c.seed = c.data.seed = seed
    c.model.init_from = init_from
    for key, value in (overrides or {}).items():
        section, name = key.rsplit(".", 1)
        c[section][name] = value
    return run_config.resolve(c, jax.device_count())


def evaluate_checkpoint(config: run_config.RunConfig, hf_dir: str, records_dir: str, split: str, output_dir: str,
                        name: str) -> Evaluation:
    """What ``launch/evaluate.py`` does: greedy answers of an export on every example of a split; writes
    metrics.json, report.md, the plots and predictions.csv to ``output_dir``."""
    e = dataclasses.replace(config.eval, records_dir=records_dir, split=split, num_examples=0)
    mesh = config.mesh.make()
    model, tokenizer = build.load_policy(config.model, hf_dir, config.data.tokenizer_dir, mesh)
    data = build.eval_pipeline(config.data, e.records_dir, e.split, e.batch_size)
    os.makedirs(output_dir, exist_ok=True)
    metrics, per_example, ids = evaluate.evaluate_policy(model, tokenizer, data, e, mesh,
                                                         predictions_path=os.path.join(output_dir, "predictions.csv"))
    evaluate.write_outputs(output_dir, {name: (metrics, per_example)}, title=f"{name} on {split}")
    return Evaluation(metrics, per_example, ids)


def mine_hard_ids(world: World, predictions_csv: str, workdir: str, mining, min_kept: int) -> tuple[str, dict]:
    """Step 4: the training ids far from every one the SFT model solved; (ids file, summary).

    Raises ValueError if fewer than ``min_kept`` (one GRPO batch) remain.
    """
    ids_path = os.path.join(workdir, "hard_ids.txt")
    summary = hard_mining.mine_to_file(hard_mining.coordinates_files(world.train, "train"), predictions_csv,
                                       ids_path, mining.radius_km, mining.correct_km)
    if summary["kept"] < min_kept:
        raise ValueError(f"hard mining kept {summary['kept']} of {summary['train']} training images, fewer than one "
                         f"GRPO batch ({min_kept}): loosen recipe.mining (radius_km {mining.radius_km:g}, "
                         f"correct_km {mining.correct_km:g})")
    return ids_path, summary


def random_records(world: World, count: int, seed: int, workdir: str, config_name: str) -> str:
    """The ablation's training set: ``count`` training ids drawn at random (``seed``), built the same way."""
    paths = hard_mining.coordinates_files(world.train, "train")
    ids = sorted(key for chunk, _, _ in hard_mining.iter_id_coordinates(paths) for key in chunk.to_pylist())
    chosen = np.random.default_rng(seed).choice(len(ids), size=count, replace=False)
    ids_path = os.path.join(workdir, "random_ids.txt")
    with open(ids_path, "w", encoding="utf-8") as f:
        f.writelines(f"{ids[i]}\n" for i in sorted(chosen))
    return filtered_records(world, ids_path, config_name)


def filtered_records(world: World, ids_path: str, config_name: str) -> str:
    """``tools/build_dataset.py --from_records=<train> --ids=<ids_path> --config_name=...``, rebuilt."""
    shutil.rmtree(os.path.join(world.data_dir, "geo_cor_records", config_name), ignore_errors=True)
    records_dir, _ = builder.build_records("generic", world.data_dir, world.data_dir, config_name=config_name,
                                           split="train", from_records=world.train, ids_path=ids_path)
    return records_dir


@dataclasses.dataclass
class SeedResult:
    """One seed of the recipe: the SFT model and each GRPO variant on the held-out images, and the mining."""

    seed: int
    sft: Evaluation
    grpo: dict[str, Evaluation]
    mining: dict
    train_records: dict[str, int]  # variant's records -> how many


def run_seed(recipe, sft_dict, grpo_dict, root: str, seed: int, variants=("hard",), grpo_overrides=None,
             tag: str = "", log=print) -> SeedResult:
    """The six steps for one seed under ``root`` (data in ``root/data``, runs in ``root/seed_<seed>``).

    ``sft_dict`` / ``grpo_dict``: the stages' config sections (configs/demo.py); ``variants``: keys of
    ``VARIANTS``; ``grpo_overrides``: dotted keys applied to every GRPO run; ``tag`` names its workdirs
    (so tuned settings do not resume another's checkpoints). Training resumes from a workdir's
    checkpoints, as ``launch/train.py`` does; every evaluation runs afresh.
    """
    if unknown := sorted(set(variants) - set(VARIANTS)):
        raise ValueError(f"unknown GRPO variants {unknown}; choose from {sorted(VARIANTS)}")
    run_dir = os.path.join(root, f"seed_{seed}")
    os.makedirs(run_dir, exist_ok=True)
    log("== 1/6 records: the demo world (train, held-out test) and its tokenizer")
    world = build_world(os.path.join(root, "data"), recipe)
    sft_config = stage_config(sft_dict, world, world.train, seed)
    sft_dir = os.path.join(run_dir, "sft")
    log(f"== 2/6 SFT on Chain-of-Region answers ({sft_config.train.num_steps} steps, seed {seed})")
    loop.run(sft_config, sft_dir)
    hf = os.path.join(sft_dir, "hf")
    log("== 3/6 the SFT model on the training set (predictions.csv)")
    on_train = evaluate_checkpoint(sft_config, hf, world.train, "train", os.path.join(run_dir, "sft_on_train"), "SFT")
    log(f"== 4/6 hard samples: training ids farther than {recipe.mining.radius_km:g} km from every one the SFT "
        f"model places within {recipe.mining.correct_km:g} km")
    hard_ids, mining = mine_hard_ids(world, os.path.join(run_dir, "sft_on_train", "predictions.csv"), run_dir,
                                     recipe.mining, grpo_dict.data.global_batch_size)
    hard_dir = filtered_records(world, hard_ids, f"demo_hard_seed{seed}")
    mining["train_reward_mean"] = on_train.metrics["reward_mean"]
    log(f"   {mining['hotspots']} solved of {mining['predictions']}; kept {mining['kept']} of {mining['train']}")
    records = {"hard": hard_dir}
    if "random" in variants:
        records["random"] = random_records(world, mining["kept"], seed, run_dir, f"demo_random_seed{seed}")
    grpo = {}
    for name in variants:
        source, overrides = VARIANTS[name]
        config = stage_config(grpo_dict, world, records[source], seed, init_from=hf,
                              overrides={**overrides, **(grpo_overrides or {})})
        log(f"== 5/6 GRPO ({name}: {source} records, {config.train.num_steps} steps, beta {config.grpo.beta:g})")
        workdir = os.path.join(run_dir, f"grpo_{name}{tag}")
        loop.run(config, workdir)
        grpo[name] = workdir
    log(f"== 6/6 the SFT and GRPO models on {recipe.world.test_images} held-out images")
    sft = evaluate_checkpoint(sft_config, hf, world.test, "test", os.path.join(run_dir, "sft_on_test"), "SFT")
    grpo = {name: evaluate_checkpoint(sft_config, os.path.join(workdir, "hf"), world.test, "test",
                                      os.path.join(workdir, "on_test"), f"SFT + GRPO ({name})")
            for name, workdir in grpo.items()}
    return SeedResult(seed, sft, grpo, mining, {source: len(builder.open_records(path, "train"))
                                                for source, path in records.items()})
