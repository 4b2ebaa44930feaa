"""The benchmark helpers' FLOP counts and the memory planner on tiny configs (a few seconds each)."""

import math
import os
import sys

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools"))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tools", "bench"))

import common  # noqa: E402
import plan_memory  # noqa: E402

from geor_jax import sharding  # noqa: E402


def test_matmul_flops_matches_xla_cost_analysis():
    a = jax.ShapeDtypeStruct((64, 32), jnp.float32)
    b = jax.ShapeDtypeStruct((32, 48), jnp.float32)
    assert common.matmul_flops(64, 48, 32) == 2 * 64 * 48 * 32
    assert common.compiled_flops(jax.jit(jnp.dot), a, b) == pytest.approx(common.matmul_flops(64, 48, 32), rel=0.01)


def test_decoder_forward_flops_matches_xla_on_a_tiny_decoder():
    from flax import nnx

    config = plan_memory.TINY.text
    from geor_jax.models.qwen2_5_vl.text import TextDecoder

    decoder = nnx.eval_shape(lambda: TextDecoder(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(decoder)
    batch, seq = 2, 32

    def forward(state, embeds):
        model = nnx.merge(graphdef, state)
        positions = jnp.broadcast_to(jnp.arange(seq)[None, None], (3, batch, seq))
        hidden, _ = model(embeds, positions, jnp.ones((batch, seq), jnp.int32))
        return hidden @ model.embed_tokens[...].T

    embeds = jax.ShapeDtypeStruct((batch, seq, config.hidden_size), jnp.float32)
    xla = common.compiled_flops(jax.jit(forward), state, embeds)
    # Every token attends over all ``seq`` keys in the masked dense attention.
    analytic = common.decoder_forward_flops(config.hidden_size, config.intermediate_size, config.num_heads,
                                            config.num_kv_heads, config.num_layers, config.vocab_size,
                                            tokens=batch * seq, context=seq)
    assert xla == pytest.approx(analytic, rel=0.15)


@pytest.mark.parametrize("tie_word_embeddings", [False, True])
def test_decode_weight_shapes_cover_every_matmul_weight_a_step_reads(tie_word_embeddings):
    """The matmul floor streams exactly the decode step's matmul weights: every text Dense kernel
    plus the LM head (the embedding table when tied)."""
    import dataclasses

    from flax import nnx

    from geor_jax.models import qwen2_5_vl as qvl
    from geor_jax.models.qwen2_5_vl import layers

    config = dataclasses.replace(plan_memory.TINY, text=dataclasses.replace(
        plan_memory.TINY.text, tie_word_embeddings=tie_word_embeddings))
    model = nnx.eval_shape(lambda: qvl.Qwen2VL(config, rngs=nnx.Rngs(0)))
    kernels = [m.kernel.shape for _, m in nnx.iter_graph(model.text) if isinstance(m, layers.Dense)]
    head = model.text.embed_tokens.shape[::-1] if model.lm_head is None else model.lm_head.kernel.shape
    shapes = common.decode_weight_shapes(config.text)
    assert len(shapes) == len(kernels) + 1
    assert sum(k * n for k, n in shapes) == sum(math.prod(s) for s in kernels) + math.prod(head)
    assert shapes[-1] == (config.text.hidden_size, config.text.vocab_size)


def _plan(devices: int):
    mesh = sharding.make_mesh(1, devices, 1, devices=jax.devices()[:devices])
    return plan_memory.Plan(plan_memory.TINY, mesh, dtype=jnp.bfloat16, param_dtype=jnp.float32, remat=True,
                            scan_layers=True)


def test_plan_state_bytes_are_exact_and_shard():
    one, four = _plan(1), _plan(4)
    assert one.param_bytes == 4 * one.n_params
    assert one.state_bytes == pytest.approx(3 * one.param_bytes, rel=0.001)  # params + AdamW mu and nu (+ counts)
    # Sharded over 4 devices: about a quarter (small vectors that 4 does not divide stay replicated).
    assert one.state_bytes / 4 <= four.state_bytes < 0.4 * one.state_bytes


# Each image layout is planned once (each plan compiles a whole step: ~20 s here): a 56x56 bucket (4x4
# patches) for SFT, native sizing's worst case at max_pixels 56*56 (a full 16-patch slot) for GRPO.
def test_plan_sft_step_updates_the_state_in_place():
    plan, images = _plan(2), plan_memory.Images(grid=(1, 4, 4))
    (phase,) = plan_memory.plan_sft(plan, batch=2, seq=48, target_len=16, images=images, micro_batches=1)
    assert phase.aliased >= 0.99 * plan.state_bytes  # the donated train state is updated in place
    assert phase.peak > plan.state_bytes and phase.temporaries > 0


def test_plan_grpo_rollout_phases_grow_with_group_size():
    plan, images = _plan(2), plan_memory.Images(slot=16)

    def phases(group_size):
        return plan_memory.plan_grpo(plan, prompts=2, group_size=group_size, prompt_len=24, completion_len=8,
                                     images=images, micro_batches=1, shared_prompt=True, update=False)

    small, large = phases(2), phases(8)
    assert [p.name for p in small] == ["rollout prefill", "rollout decode", "reference logprobs"]
    for a, b in zip(small, large):
        assert b.peak > a.peak, a.name
    result = plan_memory.report("tiny", plan, large, plan.state_bytes + plan.ref_bytes, hbm_gb=1.0)
    assert result["peak"] >= plan.state_bytes + plan.ref_bytes


@pytest.mark.parametrize("flag, message", [
    ("--mesh=1,8", "--mesh needs three positive sizes data,fsdp,tensor, got '1,8'"),
    ("--model=tiny --image_side=100", "--image_side 100 must be a multiple of 28"),
    ("--model=tiny --max_pixels=100", "--max_pixels 100: PatchConfig.max_pixels: need 784 <= max_pixels"),
])
def test_plan_memory_cli_rejects_bad_flags_in_one_line(flag, message):
    """A bad flag is one ``plan_memory.py: ...`` line and exit status 2, before anything compiles."""
    import subprocess

    tool = os.path.join(os.path.dirname(__file__), "..", "tools", "plan_memory.py")
    result = subprocess.run([sys.executable, tool, *flag.split()], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("plan_memory.py: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr, result.stderr
