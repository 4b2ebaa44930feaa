"""launch/train.py and launch/evaluate.py on the demo config, in subprocesses: outputs, exact resume, GRPO wiring.

The subprocesses run on 2 fake CPU devices (sharded fsdp=2) with a smaller
model than the demo's, under ``tests/run_probe.py``, which records each
step's example ids, sampling key and scored rollout, and can SIGKILL the run
mid-way. A resumed run must reproduce the uninterrupted one bit for bit:
the batches of every step, every logged metric, the final params and the
optimizer state. The SFT run is killed and resumed on a URL workdir
(``lfs://``, ``tests/url_scheme.py``) and compared with a local one.
Reruns load what the straight run compiled from its persistent compilation
cache (``cache_of``): most of these tests' time is XLA compiling.
"""

import json
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
import url_scheme
import process_env

from geor_jax import geo, paths, regions
from geor_jax.data import builder, demo_world
from geor_jax.data import tokenizer as tokenizer_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
G = 2  # GRPO group size
TIMING = ("step_time_s", "tokens_per_s", "generated_tokens_per_s")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("launch")
    tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=512, texts=tokenizer_lib.demo_corpus(num_places=500))
    train, _ = demo_world.build_demo_records(str(root / "data"), str(root / "src_train"), num_images=16, seed=0,
                                             height=56, width=56)
    test, _ = demo_world.build_demo_records(str(root / "data"), str(root / "src_test"), num_images=6, seed=1,
                                            height=56, width=56, split="test")
    return root, train, test


def overrides(data, stage_steps: int, checkpoint_every: int = 1) -> list[str]:
    root, train, test = data
    return [
        f"--config.data.records_dir={train}", f"--config.data.tokenizer_dir={root / 'tok'}",
        f"--config.eval.records_dir={test}", "--config.eval.batch_size=8", "--config.eval.num_examples=6",
        "--config.eval.max_new_tokens=8", "--config.data.global_batch_size=8", "--config.data.max_target_len=64",
        f"--config.train.num_steps={stage_steps}", "--config.train.log_every=1",
        f"--config.train.checkpoint_every={checkpoint_every}", "--config.train.keep_checkpoints=3",
        f"--config.grpo.group_size={G}", "--config.grpo.max_new_tokens=8",
        "--config.model.text.hidden_size=64", "--config.model.text.intermediate_size=128",
        "--config.model.text.num_heads=2", "--config.model.text.num_kv_heads=2",
    ]


NO_EVAL = "--config.eval.records_dir="


def environment(**extra) -> dict:
    """2 fake CPU devices, no torch (tests/process_env.py); JAX's persistent cache keeps every compiled
    program, not only those over 1 s."""
    return process_env.launched(2, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **extra)


def cache_of(straight_dir: pathlib.Path) -> str:
    """The flag that points a rerun at the straight run's persistent compilation cache, so it compiles nothing
    the straight run did (minutes on 2 busy cores). The resume tests prove as much: a cache hit is the program
    the straight run compiled, which XLA would compile to the same executable again, and a program that differs
    (other shapes, shardings, donation) misses the cache and compiles."""
    return f"--config.train.compilation_cache_dir={straight_dir / 'compilation_cache'}"


def with_urls(command: list[str], url_root: pathlib.Path | None) -> tuple[list[str], dict]:
    """``command`` (a script and its args) run under tests/url_scheme.py when ``url_root`` backs lfs://."""
    if url_root is None:
        return command, {}
    return ["tests/url_scheme.py", *command], {url_scheme.ROOT_VARIABLE: str(url_root)}


def launch(script: str, args: list[str], url_root: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    command, extra = with_urls([f"launch/{script}", *args], url_root)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=environment(**extra))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def probe(args: list[str], log: pathlib.Path, kill_at_batch: int = 0, scorer: str = "",
          url_root: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """``launch/train.py args`` under tests/run_probe.py; a killed run must die of SIGKILL, any other succeed.

    A killed run dies as it draws batch ``kill_at_batch``, once step 2's checkpoint is on disk.
    """
    command, extra = with_urls(["tests/run_probe.py", *args], url_root)
    env = environment(PROBE_LOG=str(log), PROBE_KILL_AT_BATCH=str(kill_at_batch), PROBE_KILL_AFTER_SAVE_OF="2",
                      PROBE_SCORER=scorer, **extra)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=env)
    expected = -signal.SIGKILL if kill_at_batch else 0
    assert result.returncode == expected, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def probe_steps(log: pathlib.Path) -> list[dict]:
    """The probe log as one dict per training step (its ids, and for GRPO its key and scored rollout)."""
    steps = []
    for line in log.read_text().splitlines():
        row = json.loads(line)
        if "ids" in row:
            steps.append(row)
        else:
            steps[-1].update(row)
    return steps


def train_rows(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows if row["split"] == "train"]


def final_checksums(workdir: pathlib.Path, step: int) -> dict:
    """The per-array checksums orbax stored (as JSON) with the final checkpoint: params, moments, counters, RNG."""
    return json.loads((workdir / "checkpoints" / str(step) / "checksums" / "metadata").read_text())


def hf_weights(workdir: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((workdir / "hf").glob("*.safetensors"))}


def resumed_from(result: subprocess.CompletedProcess) -> int:
    line = next(line for line in result.stdout.splitlines() if line.startswith("resumed from checkpoint at step"))
    return int(line.rsplit(" ", 1)[1])


def assert_kill_and_resume_is_exact(straight_dir, args, tmp_path, total_steps, kill_at_batch, scorer="",
                                    url_root=None):
    """Kill a run as it draws batch ``kill_at_batch``, resume it, and compare with the uninterrupted run.

    With ``url_root`` the killed and resumed run's workdir is ``lfs://bucket/resumed``, backed by it.
    """
    resumed_dir = tmp_path / "resumed" if url_root is None else url_root / "bucket" / "resumed"
    workdir = resumed_dir if url_root is None else "lfs://bucket/resumed"
    run_args = [f"--workdir={workdir}", *args, cache_of(straight_dir)]
    probe(run_args, tmp_path / "killed.jsonl", kill_at_batch=kill_at_batch, scorer=scorer, url_root=url_root)
    resumed = probe(run_args, tmp_path / "resumed.jsonl", scorer=scorer, url_root=url_root)
    start = resumed_from(resumed)
    assert start == 2
    steps = probe_steps(tmp_path / "killed.jsonl")[:start] + probe_steps(tmp_path / "resumed.jsonl")
    straight_steps = probe_steps(straight_dir / "probe.jsonl")
    assert len(steps) == total_steps and steps == straight_steps  # ids (and keys, rollouts, rewards) of every step
    rows = train_rows(resumed_dir)
    assert [row["step"] for row in rows] == list(range(1, total_steps + 1))  # each step logged once
    assert rows == train_rows(straight_dir)  # every metric of every step, bitwise
    assert final_checksums(resumed_dir, total_steps) == final_checksums(straight_dir, total_steps)
    assert hf_weights(resumed_dir) == hf_weights(straight_dir)
    return steps


def assert_profile(directory: pathlib.Path) -> None:
    """A JAX profiler trace (one .xplane.pb per host) under ``directory``."""
    assert list(directory.glob("plugins/profile/*/*.xplane.pb")), sorted(directory.rglob("*"))


@pytest.mark.slow
def test_sft_outputs_resume_exactly_after_sigkill_on_a_url_and_evaluate(data, tmp_path):
    """SFT with every output checked locally; then the same run killed and resumed on a URL workdir
    (tokenizer read from a URL) gives the same bits; the URL export evaluates onto a URL."""
    straight_dir, url_root = tmp_path / "straight", tmp_path / "lfs"
    args = ["--config=configs/demo.py:sft", *overrides(data, 4, checkpoint_every=2)]
    probe([f"--workdir={straight_dir}", *args, "--config.train.profile_steps=2,3"], straight_dir.with_suffix(".jsonl"))
    (straight_dir / "probe.jsonl").write_bytes(straight_dir.with_suffix(".jsonl").read_bytes())
    logs = [json.loads(line) for line in (straight_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "grad_norm", "tokens_per_s"} <= set(logs[-2]) and logs[-1]["split"] == "eval"
    assert list((straight_dir / "tensorboard").glob("events.out.tfevents.*"))
    for name in ("config.json", "tokenizer.json", "chat_template.jinja", "preprocessor_config.json",
                 "generation_config.json"):
        assert (straight_dir / "hf" / name).is_file(), name
    assert json.loads((straight_dir / "hf" / "config.json").read_text())["dtype"] == "float32"  # export.dtype
    assert json.loads((straight_dir / "config.json").read_text())["stage"] == "sft"
    assert_profile(straight_dir / "profile")  # train.profile_steps
    assert list((straight_dir / "compilation_cache").iterdir())  # JAX's persistent cache, in the workdir
    losses = [row["loss"] for row in train_rows(straight_dir)]
    assert len(set(losses)) == 4  # distinct batches and updates: a replayed first batch would not pass below

    # On lfs://, the killed run checkpoints step 2, dies drawing batch 4 (step 3 done, not saved), and
    # replays 3 and 4 (profiled: the trace is uploaded); everything matches the local run bit for bit.
    paths.copy_tree(data[0] / "tok", url_root / "bucket" / "tok")
    url_args = [*args, NO_EVAL, "--config.data.tokenizer_dir=lfs://bucket/tok", "--config.train.profile_steps=3,4"]
    assert_kill_and_resume_is_exact(straight_dir, url_args, tmp_path, total_steps=4, kill_at_batch=4,
                                    url_root=url_root)
    resumed_dir = url_root / "bucket" / "resumed"
    assert_profile(resumed_dir / "profile")
    assert list((resumed_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (resumed_dir / "hf" / "generation_config.json").is_file()

    # All 6 test images (eval.num_examples=0: all), from the URL export onto a URL.
    result = launch("evaluate.py", ["--config=configs/demo.py:sft", "--hf_dir=lfs://bucket/resumed/hf",
                                    "--output_dir=lfs://bucket/eval", "--name=tiny", *overrides(data, 1),
                                    "--config.eval.num_examples=0", "--config.data.tokenizer_dir=lfs://bucket/tok"],
                    url_root)
    eval_dir = url_root / "bucket" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())["tiny"]
    assert metrics["count"] == 6 and 0 <= metrics["valid_rate"] <= 1
    rows = (eval_dir / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,lat,lon,pred_lat,pred_lon,valid,distance_km" and len(rows) == 7
    for name in ("report.md", "error_cdf.png", "world_tiny.png"):
        assert (eval_dir / name).is_file(), name
    assert list((eval_dir / "compilation_cache").iterdir())
    assert "| tiny |" in result.stdout


def save_tiny_policy(data, directory: pathlib.Path, seed: int = 0, **token_ids) -> pathlib.Path:
    """A random tiny policy with the test tokenizer's vocabulary and ids, saved as a HF checkpoint."""
    import tiny_policy

    return tiny_policy.save_for_tokenizer(data[0] / "tok", directory, seed, **token_ids)


@pytest.mark.slow
def test_grpo_learns_from_its_own_rows_and_resumes_exactly_after_sigkill(data, tmp_path):
    """GRPO with beta 0.04 from a HF checkpoint: a learning signal, rewards against each row's own
    ground truth, fresh sampling keys every step, and a bitwise-exact resume (the KL reference is the
    starting policy after the restart too)."""
    straight_dir, grpo_init = tmp_path / "straight", save_tiny_policy(data, tmp_path / "init")
    args = ["--config=configs/demo.py:grpo", f"--config.model.init_from={grpo_init}", *overrides(data, 4, 2), NO_EVAL]
    probe([f"--workdir={straight_dir}", *args], straight_dir.with_suffix(".jsonl"), scorer="crc")
    (straight_dir / "probe.jsonl").write_bytes(straight_dir.with_suffix(".jsonl").read_bytes())
    rows = train_rows(straight_dir)
    for key in ("loss", "reward_mean", "reward_std", "kl", "clip_fraction", "zero_advantage_fraction",
                "completion_length", "valid_rate"):
        assert key in rows[0], key
    for row in rows:  # rewards differ within groups, so every step updates the policy
        assert row["zero_advantage_fraction"] < 1 and row["loss"] != 0 and row["grad_norm"] > 0, row
    assert rows[0]["kl"] == 0 and all(row["kl"] > 0 for row in rows[1:])  # the policy moves off the reference

    # Each completion is scored against its own prompt's ground truth: row r belongs to example r // G.
    records = builder.open_records(data[1], "train")
    truth = {r["id"].decode(): (r["lat"], r["lon"]) for r in (records[i] for i in range(len(records)))}
    steps = probe_steps(straight_dir / "probe.jsonl")
    for step in steps:
        expected = np.array([truth[step["ids"][r // G]] for r in range(len(step["texts"]))], np.float32)
        np.testing.assert_array_equal(np.stack([step["true_lat"], step["true_lon"]], 1), expected)
        for r in (0, 1, len(step["texts"]) - 1):  # by hand: parse, haversine, Geo-R reward
            answer = regions.parse_answer(step["texts"][r])
            distance = geo.haversine_km(answer.lat, answer.lon, *expected[r])
            assert step["reward"][r] == pytest.approx(float(geo.distance_reward(distance)), abs=1e-6)
    keys = [tuple(step["key"]) for step in steps]
    assert len(set(keys)) == len(keys)  # a new sampling key every step

    # Killed at batch 4 (step 2 saved, step 3 lost): the rerun repeats every key, batch, reward, metric and bit.
    assert_kill_and_resume_is_exact(straight_dir, args, tmp_path, total_steps=4, kill_at_batch=4, scorer="crc")

    # The reference is rebuilt from model.init_from on every start: weights changed under a run are refused.
    save_tiny_policy(data, grpo_init, seed=1)
    result = subprocess.run([sys.executable, "launch/train.py", f"--workdir={straight_dir}", *args,
                             "--config.train.num_steps=5"], cwd=ROOT, capture_output=True, text=True,
                            timeout=900, env=environment())
    assert result.returncode == 2 and "--config.model.init_from" in result.stderr
    assert "is not the policy this run started from" in result.stderr and "Traceback" not in result.stderr


def test_load_policy_checks_the_checkpoint_against_the_tokenizer(data, tmp_path):
    """``run.build.load_policy``: the evaluation entry points' loader keeps the weights and refuses a
    checkpoint whose image token differs from the tokenizer's."""
    from geor_jax import sharding
    from geor_jax.models import qwen2_5_vl as qvl
    from geor_jax.run import build

    tokenizer_dir = str(data[0] / "tok")
    tok = tokenizer_lib.load_tokenizer(tokenizer_dir)
    mesh = sharding.make_mesh(fsdp=-1)  # fsdp over the 8 test devices
    config = build.ModelConfig(dtype="float32", remat=False, scan_layers=False)
    good = qvl.load_hf_checkpoint(save_tiny_policy(data, tmp_path / "good"))
    loaded, tokenizer = build.load_policy(config, str(tmp_path / "good"), tokenizer_dir, mesh)
    assert tokenizer.vocab_size == tok.vocab_size
    np.testing.assert_array_equal(np.asarray(loaded.text.embed_tokens[...]), np.asarray(good.text.embed_tokens[...]))
    assert loaded.config == good.config

    save_tiny_policy(data, tmp_path / "bad", image_token_id=5)
    with pytest.raises(ValueError, match="--config.model.init_from: .* does not match tokenizer"):
        build.load_policy(config, str(tmp_path / "bad"), tokenizer_dir, mesh)


@pytest.mark.slow
def test_grpo_lora_resumes_exactly_exports_merged_and_peft_and_continues_from_the_adapter(data, tmp_path):
    """GRPO with LoRA (beta 0.04) from a HF checkpoint: checkpoints hold only the adapters and their moments,
    the resume is bitwise exact, ``hf/`` holds the merged policy and ``adapter/`` the PEFT adapter, and a new
    run continues from that adapter (its first step already differs from the base, the KL reference)."""
    import jax
    from flax import nnx

    from geor_jax import lora
    from geor_jax.models import qwen2_5_vl as qvl
    from geor_jax.models.qwen2_5_vl import peft_io

    straight_dir, grpo_init = tmp_path / "straight", save_tiny_policy(data, tmp_path / "init")
    args = ["--config=configs/demo.py:grpo", f"--config.model.init_from={grpo_init}", *overrides(data, 4, 2), NO_EVAL,
            "--config.lora.rank=4", "--config.lora.alpha=8", "--config.optimizer.learning_rate=1e-2"]
    probe([f"--workdir={straight_dir}", *args], straight_dir.with_suffix(".jsonl"), scorer="crc")
    (straight_dir / "probe.jsonl").write_bytes(straight_dir.with_suffix(".jsonl").read_bytes())
    rows = train_rows(straight_dir)
    assert rows[0]["kl"] == 0 and all(row["kl"] > 0 for row in rows[1:])  # adapters start at zero, then move
    saved = json.dumps(final_checksums(straight_dir, 4))
    assert "lora_b" in saved and "kernel" not in saved and "embed_tokens" not in saved  # no base weight saved

    assert_kill_and_resume_is_exact(straight_dir, args, tmp_path, total_steps=4, kill_at_batch=4, scorer="crc")

    # hf/ is the merged policy: base + adapter, as the run's own adapted model computes it.
    base = qvl.load_hf_checkpoint(grpo_init, scan_layers=True)
    lora.add_adapters(base, lora.LoRAConfig(rank=4, alpha=8.0), jax.random.key(0))
    peft_io.load_adapter(base, straight_dir / "adapter")
    merged = qvl.load_hf_checkpoint(straight_dir / "hf", scan_layers=True)
    delta = [np.abs(np.asarray(m[...]) - np.asarray(b[...])).max()
             for m, b in zip(jax.tree.leaves(nnx.state(merged, nnx.Param)),
                             jax.tree.leaves(nnx.state(lora.merge_adapters(base), nnx.Param)))]
    assert max(delta) < 1e-6

    # A new run continues from the PEFT adapter: at its first step the policy is already off the reference.
    # (All 4 steps: the step compiled for the straight run's schedule is then the one cached.)
    continued = tmp_path / "continued"
    launch("train.py", [f"--workdir={continued}", *args, f"--config.lora.init_from={straight_dir / 'adapter'}",
                        cache_of(straight_dir)])
    assert train_rows(continued)[0]["kl"] > 0
