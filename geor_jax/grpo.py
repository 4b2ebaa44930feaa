"""GRPO: group-relative advantages, the clipped KL-regularised loss, the update step.

Pure, jittable functions over arrays. Sequences are laid out group-major: the
G completions of prompt b are rows ``b*G ... b*G + G - 1`` (what the sampler
returns), and per-token arrays are (rows, completion_length) with a 0/1 mask.

One GRPO iteration: sample G completions per prompt (``geor_jax.sampling``),
score them (``geor_jax.rewards``), ``group_advantages``, reference log-probs
when beta > 0 (``make_reference_logprobs``), then one or more ``grpo_step``
calls on the same ``Rollout`` (its ``old_logp`` stays the sampler's).
"""

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from geor_jax import logprobs, train_state
from geor_jax.logprobs import Prompts

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


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO hyperparameters. Defaults: the Geo-R authors' TRL-style script.

    temperature: logits are divided by it when scoring completions, matching
      the sampler's distribution (so the first pass has ratio 1).
    shared_prompt: run each group's prompt (image + instruction) once and let
      its G completions attend to its keys/values (same loss and gradients as
      G full forwards, a fraction of the FLOPs).
    num_micro_batches: gradient accumulation over prompt groups; exact.
    max_completion_length: Dr. GRPO's constant normaliser (default: the
      completion width).
    logits_chunk_size: completion positions per LM head chunk when scoring
      (``logprobs.lm_head_logprobs``); None or 0: all at once, which holds
      (rows, C, vocab) float32 logits and their gradient.
    """

    group_size: int = 4
    beta: float = 0.04
    clip_eps: float = 0.2
    clip_eps_high: float | None = None
    aggregation: str = "token-mean"
    advantage_scale: str = "group"
    temperature: float = 0.9
    shared_prompt: bool = True
    num_micro_batches: int = 1
    max_completion_length: int | None = None
    logits_chunk_size: int | None = logprobs.DEFAULT_LOGITS_CHUNK_SIZE

    def __post_init__(self):
        if self.group_size < 1 or self.num_micro_batches < 1:
            raise ValueError(f"GRPOConfig: group_size and num_micro_batches must be >= 1, got {self}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"GRPOConfig.aggregation={self.aggregation!r}: choose one of {sorted(AGGREGATIONS)}")
        if self.advantage_scale not in ADVANTAGE_SCALES:
            raise ValueError(f"GRPOConfig.advantage_scale={self.advantage_scale!r}: choose one of {ADVANTAGE_SCALES}")
        if self.temperature <= 0:
            raise ValueError(f"GRPOConfig.temperature must be > 0, got {self.temperature}")
        if self.logits_chunk_size is not None and self.logits_chunk_size < 0:
            raise ValueError(f"GRPOConfig.logits_chunk_size must be >= 0 (0 or None: no chunking), "
                             f"got {self.logits_chunk_size}")


@dataclasses.dataclass(frozen=True)
class Rollout:
    """What one GRPO update consumes: B prompts and their B * G scored completions.

    completions / completion_mask / old_logp / ref_logp: (B * G, C);
    advantages: (B * G,). ``ref_logp`` is None when beta == 0.
    """

    prompts: Prompts
    completions: jax.Array
    completion_mask: jax.Array
    old_logp: jax.Array
    advantages: jax.Array
    ref_logp: jax.Array | None = None


jax.tree_util.register_dataclass(
    Rollout,
    data_fields=["prompts", "completions", "completion_mask", "old_logp", "advantages", "ref_logp"],
    meta_fields=[],
)


def reference_params(params, config: GRPOConfig):
    """A frozen copy of ``params`` (the SFT checkpoint) for the KL term, or None if beta == 0.

    A copy, not an alias: the update step donates the train state's buffers.
    """
    return jax.tree.map(jnp.copy, params) if config.beta != 0 else None


def make_reference_logprobs(graphdef: nnx.GraphDef, config: GRPOConfig):
    """A jitted ``fn(ref_params, prompts, completions, completion_mask) -> (B * G, C)``.

    The frozen reference policy's log-probs of the completions, once per
    rollout (not per optimisation pass). Not needed when beta == 0.
    """

    def reference(ref_params, prompts: Prompts, completions, completion_mask):
        model = nnx.merge(graphdef, ref_params)
        return logprobs.continuation_logprobs(
            model, prompts, completions, completion_mask, group_size=config.group_size,
            temperature=config.temperature, shared_prompt=config.shared_prompt,
            logits_chunk_size=config.logits_chunk_size,
        )

    return jax.jit(reference)


def make_grpo_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: GRPOConfig):
    """A jitted, pure ``step(state, rollout) -> (state, metrics)``: one optimizer update.

    Policy forward over prompt + completions (with images), ``grpo_loss``,
    gradients accumulated over ``config.num_micro_batches`` prompt groups
    (weights of the whole rollout, so the update equals one big batch), then
    ``train_state.apply_gradients`` (non-finite updates are skipped). Call it
    several times on one rollout for several optimisation passes. The state
    argument is donated.
    """

    def loss_fn(params, micro):
        prompts, completions, mask, old_logp, ref_logp, advantages, weights = micro
        model = nnx.merge(graphdef, params)
        logp = logprobs.continuation_logprobs(
            model, prompts, completions, mask, group_size=config.group_size,
            temperature=config.temperature, shared_prompt=config.shared_prompt,
            logits_chunk_size=config.logits_chunk_size,
        )
        return grpo_loss(
            logp, old_logp, ref_logp, advantages, mask, clip_eps=config.clip_eps,
            clip_eps_high=config.clip_eps_high, beta=config.beta, weights=weights,
        )

    def step(state: train_state.TrainState, rollout: Rollout):
        if config.beta != 0 and rollout.ref_logp is None:
            raise ValueError("GRPOConfig.beta != 0: the rollout needs ref_logp (make_reference_logprobs)")
        ref_logp = rollout.ref_logp if config.beta != 0 else None
        mask = rollout.completion_mask
        weights = token_weights(mask, config.aggregation, config.max_completion_length)
        rows = (mask, rollout.old_logp, ref_logp, rollout.advantages, weights)
        micro = (
            logprobs.split_prompts(rollout.prompts, config.num_micro_batches),
            *train_state.split_micro_batches((rollout.completions, *rows), config.num_micro_batches),
        )
        loss, grads, metrics = train_state.accumulate_gradients(loss_fn, state.params, micro)
        state, update_metrics = train_state.apply_gradients(state, grads, loss, optimizer)
        completion_length = jnp.sum(mask, axis=1).astype(jnp.float32)
        return state, {"loss": loss, **metrics, **update_metrics, "completion_length": completion_length.mean()}

    return jax.jit(step, donate_argnums=0)
