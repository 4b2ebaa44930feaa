"""geor_jax.sft and train_state: exact micro-batching, skipping bad updates, sharding, learning, one compile."""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import compile_counter
import tiny_policy
from geor_jax import checkpoint, logprobs, sft, sharding, train_state
from geor_jax.rollout import Prompts

OPTIMIZER = train_state.OptimizerConfig(learning_rate=1e-2, total_steps=100, max_grad_norm=1.0)
# Equality tests update with plain SGD at lr 1: param differences are gradient
# differences (Adam's first step, lr * g / |g|, amplifies float noise in tiny g).
SGD = optax.sgd(1.0)


def batch(seed=0, size=4):
    prompts = tiny_policy.prompts(batch=size, seed=seed)
    targets, mask = tiny_policy.completions(size, length=6, seed=seed + 1)
    return prompts, targets, mask


def fresh_state(mesh=None, optimizer=SGD):
    return train_state.create_train_state(tiny_policy.model(), optimizer, jax.random.key(0), mesh)


# Steps are built once per module: each build is a fresh jit and compile.
GRAPHDEF = fresh_state()[0]
SGD_STEP = sft.make_sft_step(GRAPHDEF, SGD)
ADAM_STEP = sft.make_sft_step(GRAPHDEF, OPTIMIZER.make())


def assert_trees_close(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def test_micro_batches_give_the_same_update():
    whole, whole_metrics = SGD_STEP(fresh_state()[1], *batch())
    micro, micro_metrics = sft.make_sft_step(GRAPHDEF, SGD, sft.SFTConfig(num_micro_batches=2))(fresh_state()[1], *batch())
    assert float(micro_metrics["loss"]) == pytest.approx(float(whole_metrics["loss"]), rel=1e-5)
    assert float(micro_metrics["grad_norm"]) == pytest.approx(float(whole_metrics["grad_norm"]), rel=1e-4)
    # A per-token mean over the whole batch, though the two halves hold different numbers of target tokens.
    assert float(micro_metrics["nll_per_token"]) == pytest.approx(float(whole_metrics["nll_per_token"]), rel=1e-5)
    assert_trees_close(micro.params, whole.params, atol=1e-5)
    assert int(micro.step) == 1 and int(micro.skipped_updates) == 0


def test_loss_is_mean_target_nll():
    prompts, targets, mask = batch()
    lp = logprobs.continuation_logprobs(tiny_policy.model(), prompts, targets, mask)
    _, metrics = SGD_STEP(fresh_state()[1], prompts, targets, mask)
    expected = -float(jnp.sum(lp * mask) / mask.sum())
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["target_tokens"]) == float(mask.sum())


def test_non_finite_loss_skips_the_update():
    state = fresh_state(optimizer=OPTIMIZER.make())[1]
    before = jax.tree.map(np.asarray, (state.params, state.opt_state))
    prompts, targets, mask = batch()
    poisoned = Prompts(prompts.tokens, prompts.mask, prompts.pixel_values.at[0, 0].set(jnp.nan), prompts.grids)
    state, metrics = ADAM_STEP(state, poisoned, targets, mask)
    assert float(metrics["skipped"]) == 1.0 and int(state.skipped_updates) == 1 and int(state.step) == 1
    jax.tree.map(np.testing.assert_array_equal, (state.params, state.opt_state), before)
    # The next good batch updates normally.
    state, metrics = ADAM_STEP(state, prompts, targets, mask)
    assert float(metrics["skipped"]) == 0.0 and int(state.skipped_updates) == 1


def test_sharded_step_equals_single_device():
    single, _ = SGD_STEP(fresh_state()[1], *batch())
    mesh = sharding.make_mesh(fsdp=2, tensor=4)
    graphdef, state = fresh_state(mesh)
    kernel = state.params["text"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    # AdamW's moments are sharded like their params, not gathered on one device.
    adam_state = fresh_state(mesh, optimizer=OPTIMIZER.make())[1].opt_state
    adam = next(s for s in jax.tree.leaves(adam_state, is_leaf=lambda x: hasattr(x, "mu")) if hasattr(s, "mu"))
    mu_kernel = adam.mu["text"]["layers"][0]["mlp"]["up_proj"]["kernel"]
    assert mu_kernel.sharding.spec == kernel.sharding.spec
    prompts, targets, mask = batch()
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))  # noqa: E731
    prompts = Prompts(put(prompts.tokens), put(prompts.mask), put(prompts.pixel_values), prompts.grids)
    with jax.set_mesh(mesh):
        sharded, _ = SGD_STEP(state, prompts, put(targets), put(mask))
    assert sharded.params["text"]["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec == kernel.sharding.spec
    assert_trees_close(sharded.params, single.params, atol=1e-5)


def test_sft_learns_a_fixed_batch():
    state = fresh_state(optimizer=OPTIMIZER.make())[1]
    losses = []
    for _ in range(15):
        state, metrics = ADAM_STEP(state, *batch())
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses


def test_optimizer_schedule_and_errors():
    config = train_state.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, total_steps=110)
    schedule = config.schedule()
    assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(60)) == pytest.approx(5e-4, rel=1e-3) and float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="total_steps"):
        train_state.OptimizerConfig(warmup_steps=10, total_steps=10).schedule()
    with pytest.raises(ValueError, match="3 micro-batches"):
        train_state.split_micro_batches(jnp.zeros(4), 3)
    prompts, _, _ = batch()
    mixed = Prompts(prompts.tokens, prompts.mask, prompts.pixel_values, ((1, 4, 4),) * 3 + ((1, 2, 8),))
    with pytest.raises(ValueError, match="differ between"):
        mixed.split(2)


def test_bf16_compute_keeps_fp32_master_params():
    model = tiny_policy.model(dtype=jnp.bfloat16, param_dtype=jnp.float32)
    graphdef, state = train_state.create_train_state(model, SGD, jax.random.key(0))
    state, metrics = sft.make_sft_step(graphdef, SGD)(state, *batch())
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    _, fp32_metrics = SGD_STEP(fresh_state()[1], *batch())
    # bf16 keeps ~3 significant digits: the loss agrees to about 1%.
    assert float(metrics["loss"]) == pytest.approx(float(fp32_metrics["loss"]), rel=2e-2)


# No mesh, a 1-device mesh (launch/train.py on one CPU) and the 2x4 mesh.
MESHES = {"no_mesh": None, "mesh_1": (1, 1), "mesh_2x4": (2, 4)}


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", MESHES.values(), ids=MESHES.keys())
def test_step_compiles_once_across_steps_and_a_restore(tmp_path, mesh_shape):
    """Fresh, stepped and restored states place every leaf alike (AdamW's
    counters and moments included), so the step compiles once."""
    mesh = mesh_shape and sharding.make_mesh(fsdp=mesh_shape[0], tensor=mesh_shape[1],
                                             devices=jax.devices()[:mesh_shape[0] * mesh_shape[1]])
    optimizer = OPTIMIZER.make()
    graphdef, state = fresh_state(mesh, optimizer)
    fresh = compile_counter.placements(state)
    abstract = jax.eval_shape(lambda: state)  # what run.loop.setup restores onto
    prompts, targets, mask = batch()
    if mesh is not None:
        put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))  # noqa: E731
        prompts = Prompts(put(prompts.tokens), put(prompts.mask), put(prompts.pixel_values), prompts.grids)
        targets, mask = put(targets), put(mask)
    step = sft.make_sft_step(graphdef, optimizer)
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1, async_save=False)
    with compile_counter.count_compiles(step) as compiles, jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
        for _ in range(3):
            state, _ = step(state, prompts, targets, mask)
        assert compile_counter.placements(state) == fresh
        ckpt.save(3, state)
        _, state, _ = ckpt.restore_latest(abstract)
        assert compile_counter.placements(state) == fresh
        state, _ = step(state, prompts, targets, mask)
    ckpt.close()
    assert int(state.step) == 4 and len(compiles) == 1
