"""geor_jax.lora: zero adapters change nothing (bitwise), only trained parameters get gradients and optimizer
state, merging equals the adapted forward, the GRPO reference is the base with adapters off, adapters shard like
their weights, and the config refuses bad values by name."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import tiny_policy
from geor_jax import config_fields, grpo, lora, sft, sharding, train_state
from geor_jax.rollout import Rollout

ALL = lora.LoRAConfig(rank=4, alpha=8.0, targets=lora.TARGETS)
G = 2


@nnx.jit
def _forward(model, prompts):
    return model(prompts.tokens, prompts.mask, pixel_values=prompts.pixel_values, image_grid_thw=prompts.grids).logits


def logits(model, prompts):
    return np.asarray(_forward(model, prompts))


def perturb_adapters(model, seed=1, scale=0.1):
    """Non-zero B everywhere, so the adapters change the forward."""
    for i, (_, dense) in enumerate(lora.adapted_modules(model)):
        b = dense.lora.lora_b
        b.set_value(scale * jax.random.normal(jax.random.key(seed * 1000 + i), b.shape, b.dtype))
    return model


@pytest.mark.parametrize("scan_layers", [False, True])
def test_fresh_adapters_leave_logits_bitwise_equal(scan_layers):
    prompts = tiny_policy.prompts()
    base = logits(tiny_policy.model(scan_layers=scan_layers), prompts)
    adapted = lora.add_adapters(tiny_policy.model(scan_layers=scan_layers), ALL, jax.random.key(0))
    assert len(lora.adapted_modules(adapted)) == (7 if scan_layers else 14) + 5 + 2  # text, vision block, merger
    np.testing.assert_array_equal(logits(adapted, prompts), base)
    # ... and non-zero adapters do change them, so the check above is not vacuous.
    assert np.abs(logits(perturb_adapters(adapted), prompts) - base).max() > 1e-2


@pytest.mark.parametrize("scan_layers", [False, True])
def test_merged_forward_equals_adapted_forward(scan_layers):
    prompts = tiny_policy.prompts()
    model = tiny_policy.model(scan_layers=scan_layers)
    base = logits(model, prompts)
    adapted = perturb_adapters(lora.add_adapters(model, ALL, jax.random.key(0)), scale=0.03)
    merged = lora.merge_adapters(adapted)
    assert np.abs(logits(adapted, prompts) - base).max() > 1e-2
    assert not lora.has_adapters(merged) and lora.has_adapters(adapted)  # a copy: the original keeps its adapters
    # fp32 rounding of W + AB vs xW + (xA)B, through two layers and the vision tower: 1e-5, absolute and relative
    np.testing.assert_allclose(logits(merged, prompts), logits(adapted, prompts), atol=1e-5, rtol=1e-5)


def sft_batch():
    prompts = tiny_policy.prompts(batch=2)
    targets, mask = tiny_policy.completions(2, length=6)
    return prompts, targets, mask


def one_sft_step(model, trainable, optimizer=optax.adam(1e-2)):
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(0), trainable=trainable)
    before = jax.tree.map(np.asarray, state.params)
    after, metrics = sft.make_sft_step(graphdef, optimizer)(state, *sft_batch())
    assert int(metrics["skipped"]) == 0
    return before, after


def changed_paths(before, after) -> set[str]:
    flat = lambda s: {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(s)}  # noqa: E731
    b, a = flat(before), flat(after)
    assert b.keys() == a.keys()
    return {k for k in b if not np.array_equal(b[k], a[k])}


def test_lora_step_trains_the_adapters_alone_with_optimizer_state_for_them_only():
    # remat on, as the real configs run (nnx.remat inside the step's grad must accept the frozen half of the params)
    model = lora.add_adapters(tiny_policy.model(remat=True), ALL, jax.random.key(0))
    trainable = lora.trainable_filter(ALL)
    graphdef, state = train_state.create_train_state(model, optax.adam(1e-2), jax.random.key(0), trainable=trainable)
    adapter_sizes = sorted(x.size for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam)))
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]  # Adam's mu and nu; scalars are counters
    assert sorted(x.size for x in moments) == sorted(adapter_sizes * 2)
    before, after = one_sft_step(model, trainable)
    changed = changed_paths(before, after.params)
    b_factors = {k for k in changed_paths(before, jax.tree.map(lambda x: x + 1, before)) if k.endswith("lora_b")}
    assert changed == b_factors  # every B moved (A's gradient is zero while B is), no base weight did


def test_frozen_towers_keep_their_weights():
    freeze = ("vision", "merger", "embeddings")
    model = tiny_policy.model()
    every = changed_paths(nnx.state(model, nnx.Param), jax.tree.map(lambda x: x + 1, nnx.state(model, nnx.Param)))
    before, after = one_sft_step(model, lora.trainable_filter(lora.LoRAConfig(), freeze))
    changed = changed_paths(before, after.params)
    frozen = {k for k in every if k.startswith(("vision/", "text/embed_tokens"))}
    assert frozen and not changed & frozen
    assert changed == every - frozen  # the rest of the model trained


def test_trainable_filter_and_config_refuse_bad_values_by_name():
    with pytest.raises(ValueError, match="freeze groups \\['towers'\\]"):
        lora.trainable_filter(lora.LoRAConfig(), ("towers",))
    with pytest.raises(config_fields.ConfigError, match="targets"):
        lora.LoRAConfig(rank=4, targets=("q", "qkv"))
    with pytest.raises(config_fields.ConfigError, match="dropout"):
        lora.LoRAConfig(rank=4, dropout=1.0)
    with pytest.raises(config_fields.ConfigError, match="rank"):
        lora.LoRAConfig(init_from="/some/adapter")
    with pytest.raises(ValueError, match="selects no parameter"):  # LoRA filter on a model without adapters
        train_state.create_train_state(tiny_policy.model(), optax.sgd(1.0), jax.random.key(0),
                                       trainable=nnx.LoRAParam)


def rollout():
    prompts = tiny_policy.prompts(batch=2)
    completions, mask = tiny_policy.completions(2 * G, length=5)
    rows = 2 * G
    return Rollout(prompts, completions, mask, jnp.zeros((rows, 5)), jnp.linspace(-1, 1, rows), None)


@pytest.mark.parametrize("freeze", [(), ("vision", "merger")])
def test_grpo_reference_is_the_base_with_adapters_off_and_copies_only_what_trains(freeze):
    config = grpo.GRPOConfig(group_size=G, beta=0.04)
    lora_config = ALL if not freeze else lora.LoRAConfig()
    model = tiny_policy.model()
    if lora_config.rank:
        lora.add_adapters(model, lora_config, jax.random.key(0))
    trainable = lora.trainable_filter(lora_config, freeze)
    graphdef, state = train_state.create_train_state(model, optax.adam(1e-2), jax.random.key(0), trainable=trainable)
    kept = grpo.reference_params(state.params, config, trainable)
    separate = jax.tree.map(np.array, nnx.state(tiny_policy.model(), nnx.Param))  # a separate reference copy
    if lora_config.rank:
        assert not jax.tree.leaves(kept)  # the base never changes: nothing is copied
    else:
        copied = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(kept)}
        assert copied and not any(p.startswith("vision/") for p in copied)  # frozen towers are not copied
    step = grpo.make_grpo_step(graphdef, optax.adam(1e-2), config)
    r = rollout()
    trained_before = jax.tree.map(np.array, state.split_params()[0])
    for _ in range(2):  # the policy moves away from the reference
        state, _ = step(state, r.replace(ref_logprobs=jnp.zeros((2 * G, 5))))
    assert changed_paths(trained_before, state.split_params()[0])  # it trained: the check below has teeth
    reference = grpo.make_reference_logprobs(graphdef, config)(grpo.with_reference(state.params, kept), r)
    base_graphdef = nnx.split(tiny_policy.model(), nnx.Param)[0]
    expected = grpo.make_reference_logprobs(base_graphdef, config)(separate, r)
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(expected))


def test_adapters_shard_along_their_weights_axes():
    mesh = sharding.MeshConfig(data=2, fsdp=2, tensor=2).make()
    model = sharding.create_sharded_model(lambda: tiny_policy.model(), mesh)
    lora.add_adapters(model, ALL, jax.random.key(0), mesh)
    checked = 0
    for path, dense in lora.adapted_modules(model):
        kernel_spec = dense.kernel.get_value().sharding.spec
        kernel_spec = tuple(kernel_spec) + (None,) * (dense.kernel.ndim - len(kernel_spec))
        a, b = dense.lora.lora_a.get_value(), dense.lora.lora_b.get_value()
        a_spec = tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec))
        b_spec = tuple(b.sharding.spec) + (None,) * (b.ndim - len(b.sharding.spec))
        split = dense.n_in
        assert a_spec[:split] == kernel_spec[:split] and a_spec[split] is None, path
        assert b_spec[1:] == kernel_spec[split:] and b_spec[0] is None, path
        checked += any(s is not None for s in kernel_spec)
    assert checked  # some kernels are sharded, so equal specs mean something


def test_demo_grpo_lora_config_learns_a_toy_reward():
    """configs/demo.py:grpo_lora's LoRA and GRPO settings on the tiny policy (smaller groups and completions, a
    higher learning rate for a 16-step run: the demo's 1e-3 moved the reward 0.626 -> 0.637 in 16 steps): the real
    sampler, reference and step, rewarded by the share of completion tokens below 64. The reward rises; only the
    adapters move."""
    import importlib.util
    import pathlib

    from geor_jax import sampling
    from geor_jax.run import build
    from geor_jax.run import config as run_config

    path = pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py"
    spec = importlib.util.spec_from_file_location("demo_config", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    run = run_config.resolve(demo.get_config("grpo_lora"), 1)
    assert run.lora.rank > 0 and run.grpo.beta > 0
    steps = 16
    config = dataclasses.replace(run.grpo, group_size=8, max_new_tokens=4)
    model = lora.add_adapters(tiny_policy.model(), run.lora, jax.random.key(1))
    trainable = lora.trainable_filter(run.lora, run.train.freeze)
    optimizer = build.optimizer(dataclasses.replace(run.optimizer, learning_rate=3e-2), steps)
    graphdef, state = train_state.create_train_state(model, optimizer, jax.random.key(0), trainable=trainable)
    base = jax.tree.map(np.array, nnx.split_state(state.params, nnx.LoRAParam, ...)[1])
    kept = grpo.reference_params(state.params, config, trainable)
    step, reference = grpo.make_grpo_step(graphdef, optimizer, config), grpo.make_reference_logprobs(graphdef, config)
    sampling_config = config.sampling_config(stop_tokens=(127,), pad_id=0)
    prompts = tiny_policy.prompts(batch=2, seed=3)
    rewards = []
    for i in range(steps):
        rollout = sampling.sample_groups(nnx.merge(graphdef, state.params), prompts, jax.random.key(100 + i),
                                         sampling_config, group_size=config.group_size)
        mask = np.asarray(rollout.mask, np.float32)
        reward = ((np.asarray(rollout.tokens) < 64) * mask).sum(1) / np.maximum(mask.sum(1), 1)
        advantages, stats = grpo.group_advantages(jnp.asarray(reward, jnp.float32), config.group_size)
        rollout = rollout.replace(advantages=advantages)
        rollout = rollout.replace(ref_logprobs=reference(grpo.with_reference(state.params, kept), rollout))
        state, _ = step(state, rollout)
        rewards.append(float(stats["reward_mean"]))
    start, end = np.mean(rewards[:4]), np.mean(rewards[-4:])
    assert end > start + 0.15, rewards
    frozen_now = nnx.split_state(state.params, nnx.LoRAParam, ...)[1]
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(frozen_now)):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_lora_dropout_draws_from_the_state_in_training_steps_only():
    dropped = dataclasses.replace(ALL, dropout=0.5)

    def adapted(config):
        return perturb_adapters(lora.add_adapters(tiny_policy.model(), config, jax.random.key(0)))

    prompts = tiny_policy.prompts()
    # No dropout outside a training step (sampling, the reference, evaluation).
    np.testing.assert_array_equal(logits(adapted(dropped), prompts), logits(adapted(ALL), prompts))
    sgd = optax.sgd(1.0)
    losses, steps = [], {}
    for config in (dropped, dropped, ALL):  # a fresh model each: the step donates the state's buffers
        graphdef, state = train_state.create_train_state(adapted(config), sgd, jax.random.key(0),
                                                         trainable=nnx.LoRAParam)
        step = steps.setdefault(config, sft.make_sft_step(graphdef, sgd))  # the rerun reuses its compile
        losses.append(float(step(state, *sft_batch())[1]["loss"]))
    assert losses[0] == losses[1]  # the masks are a function of the state's rng and step
    assert losses[0] != losses[2]  # and they do drop
