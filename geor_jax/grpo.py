"""GRPO: group-relative advantages and the clipped, KL-regularised policy loss.

Pure, jittable functions over arrays. Sequences are laid out group-major: the
G completions of prompt b are rows ``b*G ... b*G + G - 1`` (what the sampler
returns), and per-token arrays are (rows, completion_length) with a 0/1 mask.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(rewards, group_size: int, scale: str = "group", eps: float = 1e-4):
    """Advantages ``(r - group mean) / (std + eps)`` and group statistics.

    rewards: (B * G,) group-major. ``scale``: "group" divides by each group's
    std (GRPO), "batch" by the std of the whole batch, "none" only centres
    (Dr. GRPO). Stds use Bessel's correction, as TRL-style trainers do.
    Returns ``(advantages (B * G,), metrics)``; ``metrics["zero_advantage_fraction"]``
    is the share of groups whose rewards are all equal, so their advantage is
    0 and they teach nothing: the signal hard-sample mining fights.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale={scale!r}: choose one of {ADVANTAGE_SCALES}")
    if group_size < 1 or len(rewards) % group_size:
        raise ValueError(f"{len(rewards)} rewards do not split into groups of {group_size}")
    rewards = jnp.asarray(rewards)
    grouped = rewards.reshape(-1, group_size)
    centred = grouped - grouped.mean(axis=1, keepdims=True)
    if scale == "group":
        std = jnp.std(grouped, axis=1, keepdims=True, ddof=1) if group_size > 1 else jnp.zeros_like(centred)
        advantages = centred / (std + eps)
    elif scale == "batch":
        advantages = centred / (jnp.std(rewards, ddof=1) + eps)
    else:
        advantages = centred
    all_equal = jnp.all(grouped == grouped[:, :1], axis=1)
    metrics = {
        "reward_mean": rewards.mean(),
        "reward_std": jnp.std(rewards),
        "zero_advantage_fraction": all_equal.mean(),
    }
    return advantages.reshape(-1), metrics


def _token_mean(mask, max_length):
    del max_length
    return mask / jnp.maximum(jnp.sum(mask), 1.0)


def _sequence_mean_token_mean(mask, max_length):
    del max_length
    return mask / (jnp.maximum(jnp.sum(mask, axis=1, keepdims=True), 1.0) * mask.shape[0])


def _dr_grpo(mask, max_length):
    return mask / (mask.shape[0] * max_length)


# How per-token losses become one number: each maps (mask, max_length) to
# per-token weights, and the loss is sum(per_token_loss * weights). Weights
# computed on a whole batch and sliced into micro-batches make gradient
# accumulation exact.
AGGREGATIONS: dict[str, Callable] = {
    "token-mean": _token_mean,  # every completion token weighs the same (DAPO, TRL's default)
    "sequence-mean-token-mean": _sequence_mean_token_mean,  # the original GRPO
    "dr-grpo": _dr_grpo,  # constant normaliser rows * max length (Dr. GRPO): no length bias
}


def token_weights(mask, aggregation: str = "token-mean", max_length: int | None = None):
    """Per-token loss weights (rows, T) of an aggregation; they sum to 1 for "token-mean"."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: choose one of {sorted(AGGREGATIONS)}")
    mask = jnp.asarray(mask)
    mask = mask.astype(jnp.promote_types(mask.dtype, jnp.float32))
    return AGGREGATIONS[aggregation](mask, mask.shape[1] if max_length is None else max_length)


def grpo_loss(
    logp,
    old_logp,
    ref_logp,
    advantages,
    mask,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    beta: float = 0.04,
    aggregation: str = "token-mean",
    max_length: int | None = None,
    weights=None,
    logits=None,
):
    """The GRPO objective to minimise, and its diagnostics.

    logp, old_logp, ref_logp, mask: (rows, T) log-probabilities of the sampled
    tokens under the policy being trained, the policy that sampled them and
    the frozen reference (``ref_logp`` may be None when ``beta == 0``).
    advantages: (rows,). Per token:
    ``-min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps_high) * A)
    + beta * (exp(ref - logp) - (ref - logp) - 1)`` (the k3 KL estimator),
    with ``ratio = exp(logp - old_logp)``; ``clip_eps_high`` defaults to
    ``clip_eps`` (set it higher for DAPO's clip-higher). ``aggregation`` is a
    key of ``AGGREGATIONS``; "dr-grpo" divides by ``max_length`` (default T).
    ``weights`` overrides the aggregation with precomputed ``token_weights``
    (of the whole batch, when this call sees one micro-batch of it).
    ``logits`` (rows, T, vocab), if given, adds the mean token entropy.
    """
    if beta != 0 and ref_logp is None:
        raise ValueError("grpo_loss: beta != 0 needs ref_logp")
    logp, old_logp, advantages = jnp.asarray(logp), jnp.asarray(old_logp), jnp.asarray(advantages)
    clip_eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    if weights is None:
        weights = token_weights(mask, aggregation, max_length)
    mask = jnp.asarray(mask, logp.dtype)
    advantages = advantages[:, None]

    ratio = jnp.exp(logp - old_logp)
    clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    per_token = -jnp.minimum(ratio * advantages, clipped_ratio * advantages)
    token_mean = lambda x: jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)  # noqa: E731
    metrics = {}
    if beta != 0:
        log_ratio_ref = ref_logp - logp
        kl = jnp.exp(log_ratio_ref) - log_ratio_ref - 1.0
        per_token = per_token + beta * kl
        metrics["kl"] = token_mean(kl)
    loss = jnp.sum(per_token * weights.astype(per_token.dtype))

    clipped = ((ratio < 1.0 - clip_eps) & (advantages < 0)) | ((ratio > 1.0 + clip_eps_high) & (advantages > 0))
    metrics["clip_fraction"] = token_mean(clipped.astype(logp.dtype))
    metrics["ratio_mean"] = token_mean(ratio)
    if logits is not None:
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        metrics["entropy"] = token_mean(-jnp.sum(jnp.exp(log_probs) * log_probs, axis=-1))
    return loss, jax.tree.map(jax.lax.stop_gradient, metrics)
