"""GRPO: group-relative advantages, the clipped KL-regularised loss, the update step.

Pure, jittable functions over arrays. Sequences are laid out group-major: the
G completions of prompt b are rows ``b*G ... b*G + G - 1`` (what the sampler
returns), and per-token arrays are (rows, completion_length) with a 0/1 mask.

One GRPO iteration: sample G completions per prompt (``geor_jax.sampling``),
score them (``geor_jax.rewards``), ``group_advantages``, reference log-probs
when beta > 0 (``make_reference_logprobs``), added to the ``Rollout`` with
``replace``, then one or more ``grpo_step`` calls on it (its ``logprobs``
stay the sampler's).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from geor_jax import config_fields, logprobs, lora, sampling, train_state
from geor_jax.models.qwen2_5_vl import adapters
from geor_jax.rollout import Rollout

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
    """GRPO hyperparameters, rollouts included. Defaults: the Geo-R authors' TRL-style script.

    temperature: logits are divided by it when sampling and when scoring
      completions, so the first pass has ratio 1.
    shared_prompt: run each group's prompt (image + instruction) once and let
      its G completions attend to its keys/values (same loss and gradients as
      G full forwards, a fraction of the FLOPs).
    num_micro_batches: gradient accumulation over prompt groups; exact.
    max_completion_length: Dr. GRPO's constant normaliser (default: the
      completion width).
    logits_chunk_size: completion positions per LM head chunk when scoring
      (``logprobs.lm_head_logprobs``); None or 0: all at once, which holds
      (rows, C, vocab) float32 logits and their gradient.
    max_new_tokens, top_k, top_p: how rollouts are sampled (``sampling_config``).
    num_passes: optimisation passes (update steps) over each rollout.
    """

    group_size: int = config_fields.field(4, config_fields.at_least(1))
    beta: float = config_fields.field(0.04, config_fields.at_least(0))
    clip_eps: float = config_fields.field(0.2, config_fields.greater_than(0))
    clip_eps_high: float | None = config_fields.field(None, config_fields.greater_than(0))  # None: clip_eps
    aggregation: str = config_fields.field("token-mean", config_fields.one_of(*sorted(AGGREGATIONS)))
    advantage_scale: str = config_fields.field("group", config_fields.one_of(*ADVANTAGE_SCALES))
    temperature: float = config_fields.field(0.9, config_fields.greater_than(0))
    shared_prompt: bool = True
    num_micro_batches: int = config_fields.field(1, config_fields.at_least(1))
    max_completion_length: int | None = config_fields.field(None, config_fields.at_least(1))
    logits_chunk_size: int | None = config_fields.field(logprobs.DEFAULT_LOGITS_CHUNK_SIZE, config_fields.at_least(0))
    max_new_tokens: int = config_fields.field(256, config_fields.at_least(1))
    top_k: int = config_fields.field(0, config_fields.at_least(0))
    top_p: float = config_fields.field(1.0, config_fields.all_of(config_fields.greater_than(0),
                                                                 config_fields.between(0, 1)))
    num_passes: int = config_fields.field(1, config_fields.at_least(1))

    def __post_init__(self):
        config_fields.check(self)

    def sampling_config(self, stop_tokens: tuple[int, ...], pad_id: int) -> sampling.SamplingConfig:
        """How the rollouts of these settings are sampled (stop and pad ids from the tokenizer; progress
        reported as ``--rollout_progress_every_steps`` says)."""
        return sampling.SamplingConfig(max_new_tokens=self.max_new_tokens, temperature=self.temperature,
                                       top_k=self.top_k, top_p=self.top_p, stop_tokens=tuple(stop_tokens),
                                       pad_id=pad_id, progress_every_steps=None)

def reference_params(params, config: GRPOConfig, trainable=nnx.Param, copy: bool = True):
    """What the KL term must keep of the starting ``params`` (the SFT checkpoint), or None if beta == 0.

    The reference is the starting policy with any adapters disabled, so only
    the trained base weights (``trainable`` and not an adapter) can drift
    from it: this is a copy of those (a copy, not an alias: the update step
    donates the train state's buffers; ``copy=False`` when nothing else
    holds them). Frozen weights never change, so the live state's serve
    (``with_reference``): with LoRA nothing is copied at all.
    """
    if config.beta == 0:
        return None
    kept, _ = nnx.split_state(params, nnx.All(trainable, nnx.Not(nnx.LoRAParam)), ...)
    return jax.tree.map(jnp.copy, kept) if copy else kept


def with_reference(params, kept):
    """The KL reference's full parameters: the live ``params`` with ``kept`` (``reference_params``) in place of
    the weights training has changed. Adapters stay in, and ``make_reference_logprobs`` disables them."""
    return nnx.merge_state(params, kept)


def make_reference_logprobs(graphdef: nnx.GraphDef, config: GRPOConfig):
    """A jitted ``fn(ref_params, rollout) -> (B * G, T)``, the rollout's ``ref_logprobs``.

    The frozen reference policy's log-probs of the completions, once per
    rollout (not per optimisation pass), with every LoRA adapter disabled:
    with LoRA the reference is the base model the adapters sit on, read from
    the train state itself (``with_reference(state.params, kept)``). Not
    needed when beta == 0.
    """

    def reference(ref_params, rollout: Rollout):
        model = lora.without_adapters(nnx.merge(graphdef, ref_params))
        return logprobs.continuation_logprobs(
            model, rollout.prompts, rollout.tokens, rollout.mask, group_size=config.group_size,
            temperature=config.temperature, shared_prompt=config.shared_prompt,
            logits_chunk_size=config.logits_chunk_size,
        )

    return jax.jit(reference)


def make_grpo_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: GRPOConfig):
    """A jitted, pure ``step(state, rollout) -> (state, metrics)``: one optimizer update.

    ``rollout`` is a scored ``Rollout`` (``advantages`` set; ``ref_logprobs``
    too when beta != 0); its ``logprobs`` are the sampler's (the old policy's).
    Policy forward over prompt + completions (with images), ``grpo_loss``,
    gradients of the trained parameters (``state.trainable``) accumulated over
    ``config.num_micro_batches`` prompt groups (weights of the whole rollout,
    so the update equals one big batch), then ``train_state.apply_gradients``
    (non-finite updates are skipped). Call it
    several times on one rollout for several optimisation passes. The state
    argument is donated.
    """

    def loss_fn(params, micro, frozen):
        prompts, completions, mask, old_logp, ref_logp, advantages, weights, dropout_key = micro
        model = nnx.merge(graphdef, params, frozen, copy=True)
        with adapters.dropout_rng(dropout_key):
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
        if rollout.advantages is None:
            raise ValueError("the rollout needs advantages (group_advantages of its rewards)")
        if config.beta != 0 and rollout.ref_logprobs is None:
            raise ValueError("GRPOConfig.beta != 0: the rollout needs ref_logprobs (make_reference_logprobs)")
        ref_logp = rollout.ref_logprobs if config.beta != 0 else None
        mask = rollout.mask
        weights = token_weights(mask, config.aggregation, config.max_completion_length)
        rows = (mask, rollout.logprobs, ref_logp, rollout.advantages, weights)
        micro = (
            rollout.prompts.split(config.num_micro_batches),
            *train_state.split_micro_batches((rollout.tokens, *rows), config.num_micro_batches),
            train_state.dropout_keys(state, config.num_micro_batches),
        )
        shares = train_state.token_shares(mask, config.num_micro_batches)  # metrics are per-token means
        trained, frozen = state.split_params()  # gradients of the trained parameters only
        loss, grads, metrics = train_state.accumulate_gradients(functools.partial(loss_fn, frozen=frozen), trained,
                                                                micro, shares)
        state, update_metrics = train_state.apply_gradients(state, grads, loss, optimizer)
        completion_length = jnp.sum(mask, axis=1).astype(jnp.float32)
        return state, {"loss": loss, **metrics, **update_metrics, "completion_length": completion_length.mean()}

    return jax.jit(step, donate_argnums=0)
