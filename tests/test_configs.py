"""Every shipped config parses, its shapes are consistent, and the demo's steps lower abstractly."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from geor_jax import grpo, logprobs, run_config, sft, train_state
from geor_jax.models import qwen2_5_vl as qvl

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {"demo.py": ("sft", "grpo"), "geor_7b_sft.py": ("tpu_v5p", "gpu8"),
            "geor_7b_grpo.py": ("tpu_v5p", "gpu8"), "geor_3b_grpo.py": ("tpu_v5p", "gpu8")}


def load(name, arg):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), CONFIGS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_every_config_file_is_covered():
    assert {p.name for p in CONFIGS.glob("*.py")} == set(VARIANTS)


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in VARIANTS.items() for a in args])
def test_config_parses_and_shapes_are_consistent(name, arg):
    config = load(name, arg)
    devices = 1 if name == "demo.py" else 8
    sizes = run_config.check(config, devices)
    assert sizes["data"] * sizes["fsdp"] * sizes["tensor"] == devices
    assert config.stage in ("sft", "grpo")
    if name != "demo.py":
        assert config.model.init_from and config.data.tokenizer_dir == config.model.init_from
        assert config.model.dtype == "bfloat16" and config.model.remat


def test_real_configs_follow_the_paper():
    sft_config, grpo_config = load("geor_7b_sft.py", "tpu_v5p"), load("geor_7b_grpo.py", "tpu_v5p")
    assert (sft_config.optimizer.learning_rate, sft_config.data.global_batch_size) == (1e-5, 64)
    g = grpo_config.grpo
    assert (g.group_size, g.beta, g.temperature, g.clip_eps, g.max_new_tokens) == (4, 0.04, 0.9, 0.2, 256)
    assert grpo_config.optimizer.learning_rate == 1e-6
    assert load("geor_3b_grpo.py", "gpu8").model.text["hidden_size"] == 2048


def test_check_names_the_problem():
    config = load("demo.py", "sft")
    config.data.global_batch_size = 6
    with pytest.raises(ValueError, match="global_batch_size 6 does not split over data x fsdp = 4"):
        run_config.check(config, 4)
    config = load("demo.py", "sft")
    config.model.text["mrope_section"] = (4, 4, 4)
    with pytest.raises(ValueError, match="mrope_section"):
        run_config.check(config, 1)
    with pytest.raises(ValueError, match="stage"):
        run_config.base_config("rlhf")
    config = load("demo.py", "sft")
    config.data.resize = "crop"
    with pytest.raises(ValueError, match="data.resize='crop'"):
        run_config.check(config, 1)
    config = load("demo.py", "sft")
    config.data.processor.max_pixel = 5
    with pytest.raises(ValueError, match=r"data.processor \['max_pixel'\]: not processor settings"):
        run_config.check(config, 1)
    config = load("demo.py", "grpo")
    config.grpo.logits_chunk_size = -1
    with pytest.raises(ValueError, match="grpo.logits_chunk_size -1: must be >= 0"):
        run_config.check(config, 1)


@pytest.mark.parametrize("stage", ["sft", "grpo"])
def test_demo_steps_lower_on_abstract_shapes(stage):
    """Trace and lower the demo's jitted step with no weights allocated."""
    config = load("demo.py", stage)
    t, v = config.model.text, config.model.vision
    model_config = qvl.Qwen2VLConfig(
        text=qvl.TextConfig(vocab_size=2048, **{k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in t.items()}),
        vision=qvl.VisionConfig(out_hidden_size=t["hidden_size"],
                                **{k: tuple(x) if isinstance(x, (list, tuple)) else x for k, x in v.items()}),
        image_token_id=2040, video_token_id=2041, vision_start_token_id=2042, vision_end_token_id=2043,
    )
    optimizer = train_state.OptimizerConfig().make()

    def make_state():
        model = qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0))
        return train_state.create_train_state(model, optimizer, jax.random.key(0))

    graphdef = nnx.split(nnx.eval_shape(lambda: qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0))), nnx.Param)[0]
    state = jax.eval_shape(lambda: make_state()[1])
    # One image per row: the demo's 84x168 photos fill 72-patch slots, their prompts ~64 tokens.
    B, P, T = config.data.global_batch_size, 64, config.data.max_target_len
    s = jax.ShapeDtypeStruct
    assert config.data.resize == "native"
    prompts = logprobs.Prompts(s((B, P), jnp.int32), s((B, P), jnp.int32),
                               s((B, 72, model_config.vision.patch_dim), jnp.float32), (), s((B, 3), jnp.int32))
    if stage == "sft":
        lowered = sft.make_sft_step(graphdef, optimizer).lower(state, prompts, s((B, T), jnp.int32),
                                                                s((B, T), jnp.int32))
    else:
        G, C = config.grpo.group_size, config.grpo.max_new_tokens
        rows = lambda dtype: s((B * G, C), dtype)  # noqa: E731
        rollout = grpo.Rollout(prompts, rows(jnp.int32), rows(jnp.int32), rows(jnp.float32), s((B * G,), jnp.float32),
                               rows(jnp.float32))
        lowered = grpo.make_grpo_step(graphdef, optimizer, grpo.GRPOConfig(group_size=G)).lower(state, rollout)
    assert "stablehlo" in lowered.as_text()[:20000] or "func.func" in lowered.as_text()[:20000]
