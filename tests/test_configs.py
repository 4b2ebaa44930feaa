"""Every shipped config resolves, bad values are named as typed on the command line, the demo's steps lower."""

import dataclasses
import importlib.util
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from geor_jax import config_fields, grpo, sft, train_state
from geor_jax.data import patches, pipeline
from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.rollout import Prompts, Rollout
from geor_jax.run import config as run_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
VARIANTS = {"demo.py": ("sft", "grpo", "grpo_lora"), "geor_7b_sft.py": ("tpu_v5p", "gpu8"),
            "geor_7b_grpo.py": ("tpu_v5p", "gpu8"), "geor_3b_grpo.py": ("tpu_v5p", "gpu8"),
            "geor_7b_grpo_lora.py": ("tpu_v5e", "gpu1")}


def load(name, arg):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_config_file_is_covered():
    assert {p.name for p in CONFIGS.glob("*.py")} == set(VARIANTS)


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_resolves(name, arg):
    devices = 1 if name == "demo.py" or arg == "gpu1" else 8
    run = run_config.resolve(load(name, arg), devices)
    assert run.stage in ("sft", "grpo")
    if name != "demo.py":
        assert run.model.init_from and run.data.tokenizer_dir == run.model.init_from
        assert run.model.dtype == "bfloat16" and run.model.remat and run.mesh.fsdp == devices
        assert run.export.dtype == "bfloat16" and run.eval.num_examples == 0  # serve bf16; evaluate all


def test_real_configs_follow_the_paper():
    sft_run = run_config.resolve(load("geor_7b_sft.py", "tpu_v5p"), 8)
    grpo_run = run_config.resolve(load("geor_7b_grpo.py", "tpu_v5p"), 8)
    assert (sft_run.optimizer.learning_rate, sft_run.data.global_batch_size) == (1e-5, 64)
    g = grpo_run.grpo
    assert (g.group_size, g.beta, g.temperature, g.clip_eps, g.max_new_tokens) == (4, 0.04, 0.9, 0.2, 256)
    assert grpo_run.optimizer.learning_rate == 1e-6 and grpo_run.reward.breakpoints_km == (750.0, 2500.0, 20000.0)
    assert run_config.resolve(load("geor_3b_grpo.py", "gpu8"), 8).model.text.hidden_size == 2048
    assert sft_run.model.text == dataclasses.replace(qvl.TextConfig(), vocab_size=sft_run.model.text.vocab_size)
    # max_pixels: a full slot is the memory plan's 448 x 448 bucket; a 512 x 384 MP16 record keeps its size.
    patch = pipeline.patch_config(sft_run.data)
    assert patch.max_patches == (448 // 14) ** 2 and patches.native_size(384, 512, patch) == (392, 504)


def test_base_config_is_the_dataclass_defaults_plus_the_recipe():
    """One source of truth: a field's default lives in its dataclass; the base config only adds the paper's
    stage recipe on top."""
    grpo_base = run_config.base_config("grpo")
    assert grpo_base.grpo.to_dict() == config_fields.section(grpo.GRPOConfig()).to_dict()
    assert grpo_base.sft.to_dict() == config_fields.section(sft.SFTConfig()).to_dict()
    assert "total_steps" not in grpo_base.optimizer and "shuffle" not in grpo_base.data
    assert "vocab_size" not in grpo_base.model.text and "out_hidden_size" not in grpo_base.model.vision
    with pytest.raises(ValueError, match="stage"):
        run_config.base_config("rlhf")


# (override, the error's first words): every field is checked before anything is built (issue 13 item 5).
BAD = [
    ("optimizer.learning_rate", -1.0, "--config.optimizer.learning_rate: must be > 0, got -1.0"),
    ("optimizer.b2", 1.5, "--config.optimizer.b2: must be in [0, 1], got 1.5"),
    ("model.dtype", "float16", "--config.model.dtype: 'float16' is not one of ['float32', 'bfloat16']"),
    ("train.checkpoint_every", 0, "--config.train.checkpoint_every: must be >= 1, got 0"),
    ("grpo.aggregation", "sum", "--config.grpo.aggregation: 'sum' is not one of"),
    ("grpo.beta", -0.1, "--config.grpo.beta: must be >= 0"),
    ("grpo.top_p", 0.0, "--config.grpo.top_p: must be > 0"),
    ("grpo.logits_chunk_size", -1, "--config.grpo.logits_chunk_size: must be >= 0, got -1"),
    ("reward.distance", "manhattan", "--config.reward.distance: 'manhattan' is not one of"),
    ("reward.breakpoints_km", (750.0, 500.0, 20000.0), "--config.reward.breakpoints_km: must be 3 positive increasing"),
    ("data.buckets", ((100, 112),), "--config.data.buckets: (100, 112): sides must be positive multiples of"),
    ("data.resize", "crop", "--config.data.resize: 'crop' is not one of ['native', 'bucket']"),
    ("data.num_shapes", 0, "--config.data.num_shapes: must be >= 1, got 0"),
    ("data.processor.max_pixels", 100, "--config.data.processor.max_pixels: need 784 <= max_pixels"),
    ("data.processor.resample", 9, "--config.data.processor.resample: 9 is not a PIL filter"),
    ("data.prompt.instruction", " ", "--config.data.prompt.instruction: must not be empty"),
    ("data.records_dir", "", "--config.data.records_dir: must be set"),
    ("data.global_batch_size", 6, "--config.data.global_batch_size: 6 does not split over data x fsdp = 4 devices"),
    ("eval.num_examples", -1, "--config.eval.num_examples: must be >= 0"),
    ("mesh.fsdp", 3, "--config.mesh: {'data': 1, 'fsdp': 3, 'tensor': 1} does not use exactly 4 devices"),
    ("model.text.mrope_section", (4, 4, 4), "--config.model: text_config.rope_parameters.mrope_section"),
    ("grpo.num_micro_batches", 3, "--config.grpo.num_micro_batches: 3 does not divide data.global_batch_size 8"),
    ("lora.targets", ("qkv",), "--config.lora.targets: element 'qkv': 'qkv' is not one of ['q', 'k', 'v', 'o',"),
    ("lora.rank", -1, "--config.lora.rank: must be >= 0, got -1"),
    ("lora.init_from", "/some/adapter", "--config.lora.rank: must be > 0 to continue from init_from's adapter"),
    ("train.freeze", ("towers",), "--config.train.freeze: element 'towers': 'towers' is not one of ['vision',"),
]


@pytest.mark.parametrize("field, value, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_is_named_as_typed_on_the_command_line(field, value, message):
    config = load("demo.py", "grpo")
    section, name = field.rsplit(".", 1)
    node = config
    for part in section.split("."):
        node = node[part]
    node[name] = value
    with pytest.raises(config_fields.ConfigError) as caught:
        run_config.resolve(config, 4)
    assert str(caught.value).startswith(message), str(caught.value)
    assert "\n" not in str(caught.value)


def test_unknown_keys_are_refused():
    config = load("demo.py", "sft")
    config.data.instruction = "old layout"
    with pytest.raises(config_fields.ConfigError, match=r"--config.data.instruction: is not a setting of data"):
        run_config.resolve(config, 1)


def test_resolved_config_round_trips():
    run = run_config.resolve(load("demo.py", "grpo"), 1)
    assert run_config.resolve(run_config.to_config_dict(run), 1) == run


def launch(*args):
    return subprocess.run([sys.executable, "launch/train.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--config.optimizer.learning_rate=-0.001"], "--config.optimizer.learning_rate: must be > 0, got -0.001"),
    (["--config.grpo.grup_size=2"], "grup_size"),  # no such key: absl's flag error, in one line
    (["--config.train.num_steps=many"], "num_steps"),
], ids=["negative_lr", "unknown_key", "not_a_number"])
def test_launch_prints_one_line_and_exits_2_before_writing(tmp_path, args, message):
    workdir = tmp_path / "run"
    result = launch("--config=configs/demo.py:sft", f"--workdir={workdir}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert not workdir.exists()


def test_launch_usage_error_is_one_line():
    result = launch("--config=configs/demo.py:sft")  # no --workdir
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and "workdir" in result.stderr


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_demo_steps_lower_on_abstract_shapes(stage):
    """Trace and lower the demo's jitted step with no weights allocated."""
    run = run_config.resolve(load("demo.py", stage), 1)
    model_config = run.model.architecture(2048, image_token_id=2040, video_token_id=2041,
                                          vision_start_token_id=2042, vision_end_token_id=2043)
    optimizer = train_state.OptimizerConfig().make()

    def make_state():
        model = qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0))
        return train_state.create_train_state(model, optimizer, jax.random.key(0))

    graphdef = nnx.split(nnx.eval_shape(lambda: qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0))), nnx.Param)[0]
    state = jax.eval_shape(lambda: make_state()[1])
    # One image per row: the demo's 84x168 photos fill 72-patch slots, their prompts ~64 tokens.
    B, P, T = run.data.global_batch_size, 64, run.data.max_target_len
    s = jax.ShapeDtypeStruct
    assert run.data.resize == "native"
    prompts = Prompts(s((B, P), jnp.int32), s((B, P), jnp.int32),
                      s((B, 72, model_config.vision.patch_dim), jnp.float32), (), s((B, 3), jnp.int32))
    if stage == "sft":
        lowered = sft.make_sft_step(graphdef, optimizer, run.sft).lower(state, prompts, s((B, T), jnp.int32),
                                                                        s((B, T), jnp.int32))
    else:
        G, C = run.grpo.group_size, run.grpo.max_new_tokens
        rows = lambda dtype: s((B * G, C), dtype)  # noqa: E731
        rollout = Rollout(prompts, rows(jnp.int32), rows(jnp.int32), rows(jnp.float32), s((B * G,), jnp.float32),
                          rows(jnp.float32))
        lowered = grpo.make_grpo_step(graphdef, optimizer, run.grpo).lower(state, rollout)
    assert "stablehlo" in lowered.as_text()[:20000] or "func.func" in lowered.as_text()[:20000]
