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
    for name in ("config.json", "tokenizer.json"):
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
