"""launch/train.py (SFT, resume, GRPO) and launch/evaluate.py on the demo config, in subprocesses.

The subprocesses run on 2 fake CPU devices (sharded fsdp=2) with a smaller
model than the demo's, and evaluate only where a test reads the result.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from geor_jax.data import demo_world
from geor_jax.data import tokenizer as tokenizer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=512, texts=tokenizer_lib.demo_corpus(num_places=500))
    train, _ = demo_world.build_demo_records(str(root / "data"), str(root / "src_train"), num_images=16, seed=0,
                                             height=56, width=56)
    test, _ = demo_world.build_demo_records(str(root / "data"), str(root / "src_test"), num_images=6, seed=1,
                                            height=56, width=56, split="test")
    return root, train, test


def overrides(data, stage_steps: int) -> list[str]:
    root, train, test = data
    return [
        f"--config.data.records_dir={train}", f"--config.data.tokenizer_dir={root / 'tok'}",
        f"--config.eval.records_dir={test}", "--config.eval.batch_size=8", "--config.eval.num_examples=6",
        "--config.eval.max_new_tokens=8", "--config.data.global_batch_size=8", "--config.data.max_target_len=64",
        f"--config.train.num_steps={stage_steps}", "--config.train.log_every=1", "--config.train.checkpoint_every=1",
        "--config.grpo.group_size=2", "--config.grpo.max_new_tokens=8",
        "--config.model.text.hidden_size=64", "--config.model.text.intermediate_size=128",
        "--config.model.text.num_heads=2", "--config.model.text.num_kv_heads=2",
    ]


NO_EVAL = "--config.eval.records_dir="


def launch(script: str, args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    result = subprocess.run([sys.executable, f"launch/{script}", *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def test_train_resume_grpo_and_evaluate(data, tmp_path):
    sft_dir, grpo_dir, eval_dir = tmp_path / "sft", tmp_path / "grpo", tmp_path / "eval"
    launch("train.py", ["--config=configs/demo.py:sft", f"--workdir={sft_dir}", *overrides(data, 2), NO_EVAL])
    resumed = launch("train.py", ["--config=configs/demo.py:sft", f"--workdir={sft_dir}", *overrides(data, 3)])
    assert "resumed from checkpoint at step 2" in resumed.stdout
    logs = [json.loads(line) for line in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logs if row["split"] == "train"] == [1, 2, 3]
    assert {"loss", "grad_norm", "tokens_per_s"} <= set(logs[-2]) and logs[-1]["split"] == "eval"
    assert list((sft_dir / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "preprocessor_config.json",
                 "generation_config.json"):
        assert (sft_dir / "hf" / name).is_file(), name
    assert list((sft_dir / "hf").glob("*.safetensors"))
    assert json.loads((sft_dir / "config.json").read_text())["stage"] == "sft"

    launch("train.py", ["--config=configs/demo.py:grpo", f"--workdir={grpo_dir}",
                        f"--config.model.init_from={sft_dir / 'hf'}", *overrides(data, 1), NO_EVAL])
    grpo_logs = [json.loads(line) for line in (grpo_dir / "metrics.jsonl").read_text().splitlines()]
    train_row = next(row for row in grpo_logs if row["split"] == "train")
    for key in ("loss", "reward_mean", "reward_std", "kl", "clip_fraction", "zero_advantage_fraction",
                "completion_length", "generated_tokens_per_s", "step_time_s"):
        assert key in train_row, key
    assert list((grpo_dir / "hf").glob("*.safetensors"))

    result = launch("evaluate.py", ["--config=configs/demo.py:sft", f"--hf_dir={grpo_dir / 'hf'}",
                                    f"--output_dir={eval_dir}", "--name=tiny", *overrides(data, 1)])
    metrics = json.loads((eval_dir / "metrics.json").read_text())["tiny"]
    assert metrics["count"] == 6 and 0 <= metrics["valid_rate"] <= 1
    rows = (eval_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,lat,lon,pred_lat,pred_lon,valid,distance_km" and len(rows) == 7
    for name in ("report.md", "error_cdf.png", "world_tiny.png"):
        assert (eval_dir / name).is_file(), name
    assert "| tiny |" in result.stdout


def test_load_policy_checks_the_checkpoint_against_the_tokenizer(data, tmp_path):
    """``train_loop.load_policy``: the evaluation entry points' loader keeps the weights and refuses a
    checkpoint whose image token differs from the config's tokenizer."""
    import importlib.util

    import numpy as np

    import tiny_policy
    from geor_jax import sharding, train_loop
    from geor_jax.models import qwen2_5_vl as qvl

    spec = importlib.util.spec_from_file_location("demo_config", ROOT / "configs" / "demo.py")
    demo_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo_config)
    config = demo_config.get_config("sft")
    config.data.tokenizer_dir = str(data[0] / "tok")
    tok = tokenizer_lib.load_tokenizer(config.data.tokenizer_dir)
    ids = {k: v for k, v in tok.special_ids.model_config_overrides().items()
           if k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    mesh = sharding.make_mesh(**config.mesh)  # fsdp over the 8 test devices
    model = tiny_policy.model(model_config=tiny_policy.config(vocab_size=tok.vocab_size, **ids))
    qvl.save_hf_checkpoint(model, tmp_path / "good")
    loaded, tokenizer = train_loop.load_policy(config, str(tmp_path / "good"), mesh)
    assert tokenizer.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(np.asarray(loaded.text.embed_tokens[...]), np.asarray(model.text.embed_tokens[...]))
    assert loaded.config == model.config

    other = tiny_policy.model(model_config=tiny_policy.config(vocab_size=tok.vocab_size, **{**ids, "image_token_id": 5}))
    qvl.save_hf_checkpoint(other, tmp_path / "bad")
    with pytest.raises(ValueError, match="does not match tokenizer"):
        train_loop.load_policy(config, str(tmp_path / "bad"), mesh)
