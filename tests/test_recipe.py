"""The Geo-R recipe on a tiny demo world (geor_jax.run.recipe), and the learning benchmark's summary of it."""

import csv
import importlib.util
import json
import os
import pathlib
import sys

import numpy as np
import pytest

from geor_jax import stats
from geor_jax.data import builder
from geor_jax.run import recipe

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "bench"))

import learning  # noqa: E402


def load_demo_config():
    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_recipe(demo):
    """configs/demo.py's recipe and stages, shrunk: 24 training and 8 held-out images of one small size (one
    batch shape to compile per program; mixed sizes: tests/test_train_on_demo.py), 2 steps per stage."""
    r = demo.get_recipe()
    r.world.update(train_images=24, test_images=8, image_sizes=((56, 56),))
    stages = []
    for stage in ("sft", "grpo"):
        c = demo.get_config(stage)
        c.train.num_steps, c.train.log_every, c.train.checkpoint_every = 2, 1, 2
        c.data.global_batch_size = 8
        c.grpo.group_size, c.grpo.max_new_tokens = 2, 8
        c.eval.batch_size, c.eval.max_new_tokens = 8, 48
        stages.append(c)
    return r, *stages


def read_ids(path):
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@pytest.mark.slow
def test_run_seed_runs_the_six_steps_and_builds_the_ablations_inputs(tmp_path):
    """One recipe run (GRPO on the hard records only: each GRPO run compiles anew, minutes on a loaded CPU),
    then the ablations' inputs from its world: the random records and the no-KL configs."""
    demo = load_demo_config()
    r, sft, grpo = tiny_recipe(demo)
    lines = []
    result = recipe.run_seed(r, sft, grpo, str(tmp_path), seed=3, variants=("hard",), log=lines.append)
    assert [line.split(" ")[1] for line in lines if line.startswith("==")] == [
        "1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]
    run_dir = tmp_path / "seed_3"
    # 3: the SFT export answered every training image; its predictions are what mining read.
    with open(run_dir / "sft_on_train" / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    train_ids = sorted(p["id"] for p in predictions)
    assert len(train_ids) == 24 == result.mining["predictions"] == result.mining["train"]
    # 4-5: the hard ids are what mining kept and the hard records hold exactly them.
    hard_ids = read_ids(run_dir / "hard_ids.txt")
    assert len(hard_ids) == result.mining["kept"] == result.train_records["hard"]
    built = builder.open_records(os.path.join(tmp_path, "data", "geo_cor_records", "demo_hard_seed3", "1.1.0"), "train")
    assert sorted(str(built[i]["id"], "utf-8") if isinstance(built[i]["id"], bytes) else built[i]["id"]
                  for i in range(len(built))) == sorted(hard_ids)
    # GRPO started from the SFT export.
    with open(run_dir / "grpo_hard" / "config.json") as f:
        assert json.load(f)["model"]["init_from"] == str(run_dir / "sft" / "hf")
    # 6: both models answered the same 8 held-out images, in the same order.
    for evaluation in (result.sft, *result.grpo.values()):
        assert len(evaluation.ids) == 8 and evaluation.ids == result.sft.ids
        assert evaluation.per_example["reward"].shape == (8,)

    world = recipe.build_world(str(tmp_path / "data"), r)  # built: reused
    # The random ablation: as many distinct training ids, drawn by the seed, as records.
    random_dir = recipe.random_records(world, 10, seed=3, workdir=str(tmp_path), config_name="demo_random_seed3")
    random_ids = read_ids(tmp_path / "random_ids.txt")
    assert len(set(random_ids)) == 10 == len(builder.open_records(random_dir, "train"))
    assert set(random_ids) <= set(train_ids)
    # The no-KL ablation: beta 0, everything else as the recipe's GRPO.
    no_kl = recipe.stage_config(grpo, world, random_dir, 3, overrides=recipe.VARIANTS["no_kl"][1])
    assert no_kl.grpo.beta == 0.0 and recipe.stage_config(grpo, world, random_dir, 3).grpo.beta == grpo.grpo.beta
    assert recipe.VARIANTS["random_no_kl"] == ("random", recipe.VARIANTS["no_kl"][1])  # both ablations at once
    # Had the SFT model solved every training image, nothing would be left for GRPO: refused, with the figures.
    solved = tmp_path / "solved.csv"
    with open(solved, "w", newline="") as f:
        csv.writer(f).writerows([("id", "lat", "lon", "pred_lat", "pred_lon", "valid")]
                                + [(p["id"], p["lat"], p["lon"], p["lat"], p["lon"], 1) for p in predictions])
    with pytest.raises(ValueError, match=r"hard mining kept 0 of 24 training images, fewer than one GRPO batch \(8\)"):
        recipe.mine_hard_ids(world, str(solved), str(tmp_path), r.mining, 8)


def test_unknown_variant_is_refused_before_anything_runs(tmp_path):
    demo = load_demo_config()
    with pytest.raises(ValueError, match="unknown GRPO variants \\['bogus'\\]"):
        recipe.run_seed(demo.get_recipe(), demo.get_config("sft"), demo.get_config("grpo"), str(tmp_path), 0,
                        variants=("hard", "bogus"))
    assert not os.listdir(tmp_path)


def evaluation(rng, n, ids=None):
    distance = rng.choice([10.0, 150.0, 600.0, 3000.0, np.inf], size=n)
    reward = np.where(np.isfinite(distance), 1 - np.minimum(distance, 2500) / 2500, 0.0)
    per_example = {"reward": reward, "distance_km": distance}
    metrics = {metric: float(fn(reward, distance, 0)) for metric, fn in stats.METRICS.items()}
    return recipe.Evaluation(metrics, per_example, ids or [f"t{i}" for i in range(n)])


def seed_results(seeds=3, n=40):
    rng = np.random.default_rng(0)
    return [recipe.SeedResult(s, evaluation(rng, n), {"hard": evaluation(rng, n)}, {}, {}) for s in range(seeds)]


def test_summary_pools_the_seeds_paired_differences():
    results = seed_results()
    summary = learning.summarize(results, "hard", num_resamples=500)
    for metric, fn in stats.METRICS.items():
        s = summary[metric]
        direct = [fn(r.grpo["hard"].per_example["reward"], r.grpo["hard"].per_example["distance_km"], 0)
                  - fn(r.sft.per_example["reward"], r.sft.per_example["distance_km"], 0) for r in results]
        assert [i.estimate for i in s["per_seed"]] == pytest.approx(direct)
        assert s["pooled"].estimate == pytest.approx(np.mean(direct))
        assert s["seed_sd"] == pytest.approx(np.std(direct, ddof=1))
        assert s["sft"] == pytest.approx(np.mean([r.sft.metrics[metric] for r in results]))
        for i in (*s["per_seed"], s["pooled"]):
            assert i.low <= i.estimate <= i.high
    assert learning.table(summary, [0, 1, 2]).count("\n") == 1 + len(learning.LABELS)
    line = learning.seed_line(results[0], "hard")
    assert line.startswith(f"mean reward {summary['reward_mean']['per_seed'][0].estimate:+.3f} [")


def test_goal_needs_every_seed():
    results = seed_results(seeds=2)
    for r in results:  # a uniform gain of 0.05 on seed 0 and 0.0 on seed 1
        r.grpo["hard"] = recipe.Evaluation(r.sft.metrics, dict(r.sft.per_example), r.sft.ids)
    results[0].grpo["hard"].per_example["reward"] = results[0].sft.per_example["reward"] + 0.05
    assert learning.goal_met(learning.summarize(results, "hard", num_resamples=200)) == (False, True)
    results[1].grpo["hard"].per_example["reward"] = results[1].sft.per_example["reward"] + 0.01
    assert learning.goal_met(learning.summarize(results, "hard", num_resamples=200)) == (True, True)


def test_summary_refuses_evaluations_of_different_images():
    results = seed_results(seeds=2)
    results[1].grpo["hard"].ids[0] = "other"
    with pytest.raises(ValueError, match="seed 1: the hard and SFT evaluations cover different images"):
        learning.summarize(results, "hard")


def test_a_written_evaluation_reads_back_with_its_rewards(tmp_path):
    """--from_outputs summarizes predictions.csv files: their per-image rewards are evaluate_answers'."""
    from geor_jax import evaluate

    texts = ["Country: France\nState: Ile-de-France\nCity: Paris\nCoordinates: (49.2566, 2.3522)",
             "Country: Japan\nState: Tokyo\nCity: Tokyo\nCoordinates: (30.0, 120.0)", "no idea"]
    metrics, per_example = evaluate.evaluate_answers(texts, [48.8566, 35.6895, 1.0], [2.3522, 139.6917, 1.0])
    path = str(tmp_path / "predictions.csv")
    evaluate.write_predictions(path, ["a", "b", "c"], per_example)
    back = learning.evaluation_from_predictions(path)
    assert back.ids == ["a", "b", "c"]
    np.testing.assert_allclose(back.per_example["reward"], per_example["reward"], rtol=1e-6)
    np.testing.assert_array_equal(back.per_example["distance_km"], per_example["distance_km"])
    assert back.metrics["reward_mean"] == pytest.approx(metrics["reward_mean"])
