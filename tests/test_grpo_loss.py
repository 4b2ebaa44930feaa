"""geor_jax.grpo: advantages and loss against a direct PyTorch reference, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from geor_jax import grpo


def torch_grpo_loss(logp, old_logp, ref_logp, adv, mask, clip_eps, clip_high, beta, aggregation, max_length):
    """The GRPO formula written out independently in PyTorch."""
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None]
    loss = -torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip_eps, 1 + clip_high) * a)
    if beta:
        loss = loss + beta * (torch.exp(ref_logp - logp) - (ref_logp - logp) - 1)
    if aggregation == "token-mean":
        return (loss * mask).sum() / mask.sum()
    if aggregation == "sequence-mean-token-mean":
        return ((loss * mask).sum(1) / mask.sum(1)).mean()
    return (loss * mask).sum() / (loss.shape[0] * max_length)


def random_batch(seed, rows=8, length=12):
    rng = np.random.default_rng(seed)
    old = rng.normal(-2.0, 0.5, (rows, length))
    logp = old + rng.normal(0, 0.3, (rows, length))  # ratios on both sides of the clip range
    ref = old + rng.normal(0, 0.2, (rows, length))
    adv = rng.normal(0, 1, rows)
    lengths = rng.integers(1, length + 1, rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.float64)
    return logp, old, ref, adv, mask


@pytest.mark.parametrize("aggregation", sorted(grpo.AGGREGATIONS))
@pytest.mark.parametrize("beta, clip_high", [(0.04, 0.2), (0.0, 0.28), (0.1, 0.2)])
def test_loss_and_gradient_match_torch(aggregation, beta, clip_high):
    logp, old, ref, adv, mask = random_batch(0)
    kwargs = dict(clip_eps=0.2, clip_eps_high=clip_high, beta=beta, aggregation=aggregation, max_length=16)
    with jax.enable_x64(True):
        loss_fn = lambda lp: grpo.grpo_loss(lp, old, ref if beta else None, adv, mask, **kwargs)[0]  # noqa: E731
        loss, grad = jax.value_and_grad(loss_fn)(jnp.asarray(logp))
    t_logp = torch.tensor(logp, requires_grad=True)
    t_loss = torch_grpo_loss(
        t_logp, *(torch.tensor(x) for x in (old, ref, adv, mask)), 0.2, clip_high, beta, aggregation, 16
    )
    t_loss.backward()
    np.testing.assert_allclose(float(loss), t_loss.item(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(grad), t_logp.grad.numpy(), rtol=1e-10, atol=1e-14)
    # Masked tokens get no gradient.
    assert np.all(np.asarray(grad)[mask == 0] == 0)


@pytest.mark.parametrize("aggregation", sorted(grpo.AGGREGATIONS))
def test_micro_batches_with_batch_weights_sum_to_the_full_loss(aggregation):
    logp, old, ref, adv, mask = random_batch(5, rows=8)
    full, _ = grpo.grpo_loss(logp, old, ref, adv, mask, aggregation=aggregation)
    weights = grpo.token_weights(mask, aggregation)
    parts = [
        grpo.grpo_loss(logp[s], old[s], ref[s], adv[s], mask[s], weights=weights[s])[0]
        for s in (slice(0, 3), slice(3, 8))
    ]
    assert float(sum(parts)) == pytest.approx(float(full), rel=1e-5)


def test_loss_metrics():
    logp, old, ref, adv, mask = random_batch(1)
    logits = np.random.default_rng(2).normal(size=(*logp.shape, 5)).astype(np.float32)
    loss, metrics = jax.jit(grpo.grpo_loss)(
        jnp.float32(logp), jnp.float32(old), jnp.float32(ref), jnp.float32(adv), jnp.float32(mask), logits=logits
    )
    ratio = np.exp(logp - old)
    a = adv[:, None] * np.ones_like(logp)
    clipped = ((ratio < 0.8) & (a < 0)) | ((ratio > 1.2) & (a > 0))
    assert float(metrics["clip_fraction"]) == pytest.approx((clipped * mask).sum() / mask.sum(), rel=1e-5)
    assert 0 < float(metrics["clip_fraction"]) < 1
    kl = np.exp(ref - logp) - (ref - logp) - 1
    assert float(metrics["kl"]) == pytest.approx((kl * mask).sum() / mask.sum(), rel=1e-4)
    p = torch.softmax(torch.tensor(logits), -1)
    entropy = -(p * p.log()).sum(-1).numpy()
    assert float(metrics["entropy"]) == pytest.approx((entropy * mask).sum() / mask.sum(), rel=1e-5)
    assert np.isfinite(float(loss))


def test_on_policy_loss_is_minus_mean_advantage():
    # ratio 1, no KL: the loss is -A weighted by each aggregation's token weights.
    logp, _, _, adv, mask = random_batch(3)
    loss, _ = grpo.grpo_loss(logp, logp, None, adv, mask, beta=0.0, aggregation="sequence-mean-token-mean")
    assert float(loss) == pytest.approx(-adv.mean(), rel=1e-5)


def test_loss_rejects_bad_arguments():
    logp, old, ref, adv, mask = random_batch(4)
    with pytest.raises(ValueError, match="aggregation"):
        grpo.grpo_loss(logp, old, ref, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="ref_logp"):
        grpo.grpo_loss(logp, old, None, adv, mask, beta=0.04)


def test_group_advantages_match_reference():
    rewards = np.array([1.0, 0.5, 0.5, 0.0, 0.3, 0.3, 0.3, 0.3, 0.9, 0.1, 0.2, 0.4])
    adv, metrics = jax.jit(grpo.group_advantages, static_argnums=(1, 2))(jnp.asarray(rewards), 4, "group")
    grouped = torch.tensor(rewards).view(3, 4)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)
    np.testing.assert_allclose(np.asarray(adv), expected.view(-1).numpy(), rtol=1e-5, atol=1e-6)
    assert float(metrics["zero_advantage_fraction"]) == pytest.approx(1 / 3)
    assert np.all(np.asarray(adv)[4:8] == 0)  # the all-equal group
    assert float(metrics["reward_mean"]) == pytest.approx(rewards.mean())


def test_group_advantage_scales():
    rewards = jnp.array([1.0, 0.0, 0.2, 0.6])
    centred = np.array([0.5, -0.5, -0.2, 0.2])
    none, _ = grpo.group_advantages(rewards, 2, scale="none")
    np.testing.assert_allclose(np.asarray(none), centred, atol=1e-6)
    batch, _ = grpo.group_advantages(rewards, 2, scale="batch")
    np.testing.assert_allclose(np.asarray(batch), centred / (np.std(np.asarray(rewards), ddof=1) + 1e-4), rtol=1e-5)
    single, metrics = grpo.group_advantages(rewards, 1)
    assert np.all(np.asarray(single) == 0) and float(metrics["zero_advantage_fraction"]) == 1.0


def test_group_advantages_reject_bad_arguments():
    with pytest.raises(ValueError, match="groups of 3"):
        grpo.group_advantages(jnp.zeros(8), 3)
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(jnp.zeros(8), 4, scale="global")
