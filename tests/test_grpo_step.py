"""geor_jax.grpo step: equal to grpo_loss computed directly under each of its settings (aggregations, beta,
clip-higher, Dr. GRPO length, micro-batches, shared prompt), passes, learning, sharding, one compile."""

import contextlib
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import compile_counter
import tiny_policy
from geor_jax import checkpoint, geo, grpo, logprobs, sharding, train_state
from geor_jax.rollout import Prompts, Rollout

G = 3
SGD = optax.sgd(1.0)  # param differences = gradient differences
CONFIG = grpo.GRPOConfig(group_size=G, beta=0.04, temperature=0.9)


def fresh_state():
    return train_state.create_train_state(tiny_policy.model(), SGD, jax.random.key(0))[1]


def make_rollout(seed=0):
    prompts = tiny_policy.prompts(batch=2, seed=seed)
    completions, mask = tiny_policy.completions(2 * G, length=5, seed=seed + 1)
    policy_logp = logprobs.continuation_logprobs(
        tiny_policy.model(), prompts, completions, mask, group_size=G, temperature=CONFIG.temperature
    )
    rng = np.random.default_rng(seed)
    old_logp = policy_logp + 0.3 * rng.normal(size=policy_logp.shape)  # ratios on both sides of the clip
    ref_logp = policy_logp + 0.2 * rng.normal(size=policy_logp.shape)
    rewards = jnp.asarray(rng.uniform(size=2 * G), jnp.float32)
    advantages, _ = grpo.group_advantages(rewards, G)
    return Rollout(prompts, completions, mask, jnp.float32(old_logp), advantages, jnp.float32(ref_logp))


# Module-scoped fixtures, built on first use (not at import): the model
# structure, one rollout, one jitted step per config (the tests share its
# compile) and the default config's step.


@pytest.fixture(scope="module")
def graphdef():
    return train_state.create_train_state(tiny_policy.model(), SGD, jax.random.key(0))[0]


@pytest.fixture(scope="module")
def rollout():
    return make_rollout()


@pytest.fixture(scope="module")
def step_for(graphdef):
    """``step_for(config)``: the jitted SGD step of ``config``, built once per config."""
    return functools.cache(lambda config: grpo.make_grpo_step(graphdef, SGD, config))


@pytest.fixture(scope="module")
def whole(step_for, rollout):
    """(state, metrics) after one default-config step from the fresh state."""
    return step_for(CONFIG)(fresh_state(), rollout)


def assert_params_close(a, b, atol=2e-5):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def loss_settings(config: grpo.GRPOConfig) -> dict:
    """The ``grpo_loss`` keywords that ``config`` sets."""
    return dict(clip_eps=config.clip_eps, clip_eps_high=config.clip_eps_high, beta=config.beta,
                aggregation=config.aggregation, max_length=config.max_completion_length)


def rollout_for(rollout, config: grpo.GRPOConfig):
    """``rollout`` as a run of ``config`` builds it: no reference log-probs when beta == 0."""
    return rollout if config.beta else dataclasses.replace(rollout, ref_logprobs=None)


@pytest.fixture(scope="module")
def policy(graphdef, rollout):
    """``(logp, grad_of)``: the fresh policy's log-probs of the rollout (G full forwards) and ``grad_of(cotangent)``,
    their vector-Jacobian product in the params (jax.vjp; one jit that every setting shares)."""
    params = fresh_state().params

    def policy_logp(params):
        return logprobs.continuation_logprobs(
            nnx.merge(graphdef, params), rollout.prompts, rollout.tokens, rollout.mask,
            group_size=G, temperature=CONFIG.temperature,
        )

    @jax.jit
    def logp_and_pullback(params, cotangent):
        logp, pullback = jax.vjp(policy_logp, params)
        return logp, pullback(cotangent)[0]

    logp, _ = logp_and_pullback(params, jnp.zeros(rollout.tokens.shape, jnp.float32))
    return logp, lambda cotangent: logp_and_pullback(params, cotangent)[1]


def direct_loss(logp, rollout, config: grpo.GRPOConfig, rows=slice(None)):
    """``grpo_loss`` of the rollout's ``rows`` under ``config``'s settings, and its diagnostics."""
    r = rollout_for(rollout, config)
    ref_logp = None if r.ref_logprobs is None else r.ref_logprobs[rows]
    return grpo.grpo_loss(logp[rows], r.logprobs[rows], ref_logp, r.advantages[rows], r.mask[rows],
                          **loss_settings(config))


def direct(policy, rollout, config: grpo.GRPOConfig):
    """``(loss, metrics, grads)`` computed without the step: ``direct_loss`` and its gradient in the params,
    jax.grad by the chain rule (d loss / d logp by jax.grad, pulled back through the policy's log-probs)."""
    logp, grad_of = policy
    (loss, metrics), cotangent = jax.value_and_grad(lambda lp: direct_loss(lp, rollout, config), has_aux=True)(logp)
    return float(loss), metrics, grad_of(cotangent)


# The step under its settings: every aggregation with beta > 0 and beta 0, clip-higher, Dr. GRPO's
# constant length, 1 and 2 micro-batches, shared prompt and full forwards, in 6 compiles.
SETTINGS = {
    "token-mean": {},  # beta 0 is its own code path (no KL term): covered under both other aggregations
    "sequence-mean/clip-high": dict(aggregation="sequence-mean-token-mean", clip_eps_high=0.28),
    "sequence-mean/beta0/micro2": dict(aggregation="sequence-mean-token-mean", beta=0.0, num_micro_batches=2),
    "dr-grpo/max-length/micro2": dict(aggregation="dr-grpo", max_completion_length=8, num_micro_batches=2),
    "dr-grpo/beta0/clip-high/full-forwards": dict(aggregation="dr-grpo", beta=0.0, clip_eps_high=0.28,
                                                  shared_prompt=False),
}


def settings_dropped(config: grpo.GRPOConfig) -> dict[str, grpo.GRPOConfig]:
    """``config`` with each of its loss settings reverted to what a step that ignored it would use."""
    dropped = {"beta": dataclasses.replace(config, beta=0.0 if config.beta else CONFIG.beta)}
    if config.aggregation != "token-mean":
        dropped["aggregation"] = dataclasses.replace(config, aggregation="token-mean")
    if config.clip_eps_high is not None:
        dropped["clip_eps_high"] = dataclasses.replace(config, clip_eps_high=None)
    if config.max_completion_length is not None:
        dropped["max_completion_length"] = dataclasses.replace(config, max_completion_length=None)
    return dropped


def per_micro_batch_loss(logp, rollout, config: grpo.GRPOConfig) -> float:
    """The loss if each micro-batch were normalised on its own (not by the whole rollout's weights)."""
    rows = rollout.tokens.shape[0] // config.num_micro_batches
    return sum(float(direct_loss(logp, rollout, config, slice(i * rows, (i + 1) * rows))[0])
               for i in range(config.num_micro_batches))


LOSS_ATOL = 1e-6  # float32 weighted sums of 15 O(1) per-token terms (losses cancel to 1e-3 in places)
GRAD_TOL = 1e-4  # of the gradient's largest entry: f32 params of O(1) minus their update


def max_difference(a, b) -> float:
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS)
def test_step_is_grpo_loss_of_the_policy_logprobs_under_its_settings(settings, step_for, rollout, policy):
    """The step's loss and its SGD(lr=1) update equal ``grpo_loss`` and its gradient computed directly."""
    config = dataclasses.replace(CONFIG, **settings)
    loss, metrics, grads = direct(policy, rollout, config)
    grad_scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads))
    # Teeth: a step that ignored any one of these settings would report another loss and update.
    for name, other in settings_dropped(config).items():
        other_loss, _, other_grads = direct(policy, rollout, other)
        assert abs(other_loss - loss) > 100 * LOSS_ATOL, name
        assert max_difference(other_grads, grads) > 10 * GRAD_TOL * grad_scale, name
    if config.num_micro_batches > 1:
        assert abs(per_micro_batch_loss(policy[0], rollout, config) - loss) > 100 * LOSS_ATOL
    assert 0 < float(metrics["clip_fraction"]) < 1  # ratios on both sides of the clip

    before = fresh_state().params  # an equal copy: the step donates its state
    state, step_metrics = step_for(config)(fresh_state(), rollout_for(rollout, config))
    assert float(step_metrics["loss"]) == pytest.approx(loss, abs=LOSS_ATOL)
    update = jax.tree.map(jnp.subtract, before, state.params)
    assert max_difference(update, grads) <= GRAD_TOL * grad_scale
    assert int(state.step) == 1
    assert float(step_metrics["completion_length"]) == float(rollout.mask.sum()) / (2 * G)
    assert ("kl" in step_metrics) == (config.beta != 0)
    for key in metrics:  # token means over the whole rollout, micro-batches or not
        assert float(step_metrics[key]) == pytest.approx(float(metrics[key]), rel=1e-4), key


def test_reference_logprobs_and_beta_zero(graphdef, step_for, rollout):
    step = step_for(CONFIG)
    reference = grpo.make_reference_logprobs(graphdef, CONFIG)
    state = fresh_state()
    ref_params = grpo.reference_params(state.params, CONFIG)
    assert grpo.reference_params(state.params, dataclasses.replace(CONFIG, beta=0.0)) is None
    step(state, rollout)  # donates state's buffers; the reference copy survives
    ref = reference(ref_params, rollout)
    on_policy = dataclasses.replace(rollout, logprobs=ref, ref_logprobs=ref)
    # Reference = policy = sampler: ratio 1, KL 0, loss = -mean advantage per token.
    _, metrics = step(fresh_state(), on_policy)
    assert float(metrics["kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(metrics["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
    no_kl = dataclasses.replace(CONFIG, beta=0.0)
    _, metrics = step_for(no_kl)(fresh_state(), dataclasses.replace(on_policy, ref_logprobs=None))
    assert "kl" not in metrics and np.isfinite(float(metrics["loss"]))
    with pytest.raises(ValueError, match="ref_logprobs"):
        step(fresh_state(), dataclasses.replace(rollout, ref_logprobs=None))


def test_config_errors():
    with pytest.raises(ValueError, match="aggregation"):
        grpo.GRPOConfig(aggregation="sum")
    with pytest.raises(ValueError, match="temperature"):
        grpo.GRPOConfig(temperature=0.0)
    with pytest.raises(ValueError, match="logits_chunk_size: must be >= 0, got -64"):
        grpo.GRPOConfig(logits_chunk_size=-64)


def test_grpo_learns_to_locate():
    """A categorical policy over 64 candidate places learns, from the Geo-R
    reward alone, to pick places near a target: GRPO loss + group advantages
    + distance reward, end to end."""
    rng = np.random.default_rng(0)
    candidates = jnp.asarray(rng.uniform([-60, -180], [70, 180], (64, 2)), jnp.float32)
    target = (48.86, 2.35)
    group, prompts_per_step = 8, 4
    optimizer = optax.adam(0.1)
    logits = jnp.zeros(64)
    opt_state = optimizer.init(logits)

    @jax.jit
    def iteration(logits, opt_state, key):
        picks = jax.random.categorical(key, logits, shape=(prompts_per_step * group,))
        distance = geo.haversine_km(candidates[picks, 0], candidates[picks, 1], *target)
        rewards = geo.distance_reward(distance)
        advantages, stats = grpo.group_advantages(rewards, group)
        old_logp = jax.nn.log_softmax(logits)[picks][:, None]

        def loss(logits):
            logp = jax.nn.log_softmax(logits)[picks][:, None]
            return grpo.grpo_loss(logp, old_logp, None, advantages, jnp.ones_like(logp), beta=0.0)[0]

        updates, opt_state = optimizer.update(jax.grad(loss)(logits), opt_state, logits)
        return optax.apply_updates(logits, updates), opt_state, stats["reward_mean"]

    rewards = []
    for key in jax.random.split(jax.random.key(0), 60):
        logits, opt_state, reward = iteration(logits, opt_state, key)
        rewards.append(float(reward))
    start, end = np.mean(rewards[:5]), np.mean(rewards[-5:])
    best = float(geo.distance_reward(geo.haversine_km(candidates[:, 0], candidates[:, 1], *target)).max())
    assert end > start + 0.3, (start, end)
    assert end > 0.9 * best


def on_mesh(rollout, mesh):
    """``rollout`` with every array's leading axis split over the mesh's data and fsdp axes."""
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))  # noqa: E731
    prompts = rollout.prompts
    return Rollout(
        Prompts(put(prompts.tokens), put(prompts.mask), put(prompts.pixel_values), prompts.grids),
        *(put(x) for x in (rollout.tokens, rollout.mask, rollout.logprobs, rollout.advantages,
                           rollout.ref_logprobs)),
    )


def test_sharded_step_equals_single_device(step_for, rollout, whole):
    mesh = sharding.make_mesh(fsdp=2, tensor=4)
    _, state = train_state.create_train_state(tiny_policy.model(), SGD, jax.random.key(0), mesh)
    with jax.set_mesh(mesh):
        sharded, metrics = step_for(CONFIG)(state, on_mesh(rollout, mesh))
    assert float(metrics["loss"]) == pytest.approx(float(whole[1]["loss"]), rel=1e-5)
    assert_params_close(sharded, whole[0])


def test_second_pass_on_one_rollout_is_off_policy(step_for, rollout):
    """Several optimisation passes reuse the rollout's (old) logprobs: after one update the ratio moves off 1."""
    on_policy = dataclasses.replace(rollout, logprobs=logprobs.continuation_logprobs(
        tiny_policy.model(), rollout.prompts, rollout.tokens, rollout.mask, group_size=G,
        temperature=CONFIG.temperature))
    step = step_for(CONFIG)
    state, first = step(fresh_state(), on_policy)
    state, second = step(state, on_policy)
    assert float(first["ratio_mean"]) == pytest.approx(1.0, abs=1e-5)
    assert abs(float(second["ratio_mean"]) - 1.0) > 1e-3
    assert int(state.step) == 2


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [None, (2, 4)], ids=["no_mesh", "mesh_2x4"])
def test_step_compiles_once_across_steps_and_a_restore(tmp_path, mesh_shape, graphdef, rollout):
    """Fresh, stepped and restored states place every leaf alike (AdamW's
    counters and moments included), so the step compiles once."""
    mesh = mesh_shape and sharding.make_mesh(fsdp=mesh_shape[0], tensor=mesh_shape[1])
    optimizer = train_state.OptimizerConfig(learning_rate=1e-3, total_steps=10).make()
    _, state = train_state.create_train_state(tiny_policy.model(), optimizer, jax.random.key(0), mesh)
    fresh = compile_counter.placements(state)
    abstract = jax.eval_shape(lambda: state)  # what run.loop.setup restores onto
    rollout = rollout if mesh is None else on_mesh(rollout, mesh)
    step = grpo.make_grpo_step(graphdef, optimizer, CONFIG)
    ckpt = checkpoint.Checkpointer(str(tmp_path), save_every=1, async_save=False)
    with compile_counter.count_compiles(step) as compiles, jax.set_mesh(mesh) if mesh else contextlib.nullcontext():
        for _ in range(3):
            state, _ = step(state, rollout)
        assert compile_counter.placements(state) == fresh
        ckpt.save(3, state)
        _, state, _ = ckpt.restore_latest(abstract)
        assert compile_counter.placements(state) == fresh
        state, _ = step(state, rollout)
    ckpt.close()
    assert int(state.step) == 4 and len(compiles) == 1

