"""Chain-of-Region SFT: masked cross-entropy on the answer tokens, and its update step.

The model reads the image prompt and is scored only on the target (the CoR
answer and its end token): the LM head runs on target positions only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from geor_jax import config_fields, logprobs, train_state
from geor_jax.rollout import Prompts


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """SFT step settings: gradient accumulation (exact) and the LM head chunk.

    logits_chunk_size: target positions per LM head chunk
    (``logprobs.lm_head_logprobs``); None or 0: all at once.
    """

    num_micro_batches: int = config_fields.field(1, config_fields.at_least(1))
    logits_chunk_size: int | None = config_fields.field(logprobs.DEFAULT_LOGITS_CHUNK_SIZE, config_fields.at_least(0))

    def __post_init__(self):
        config_fields.check(self)


def sft_loss(model, prompts: Prompts, targets: jax.Array, target_mask: jax.Array, weights: jax.Array | None = None,
             logits_chunk_size: int | None = logprobs.DEFAULT_LOGITS_CHUNK_SIZE):
    """Cross-entropy of ``targets`` (B, T) after ``prompts``, and metrics.

    ``weights`` (B, T) default to ``target_mask / target_mask.sum()`` (mean over
    target tokens); pass the whole batch's weights to a micro-batch so the
    micro-batch losses add up to the batch loss. ``logits_chunk_size``: target
    positions per LM head chunk (``logprobs.lm_head_logprobs``; None or 0: all).
    """
    mask = jnp.asarray(target_mask, jnp.float32)
    if weights is None:
        weights = mask / jnp.maximum(mask.sum(), 1.0)
    token_logp = logprobs.continuation_logprobs(model, prompts, targets, target_mask,
                                                logits_chunk_size=logits_chunk_size)
    loss = -jnp.sum(token_logp * weights)
    tokens = jnp.maximum(mask.sum(), 1.0)
    return loss, {"nll_per_token": -jnp.sum(token_logp * mask) / tokens, "target_tokens": mask.sum()}


def make_sft_step(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, config: SFTConfig = SFTConfig()):
    """A jitted, pure ``step(state, prompts, targets, target_mask) -> (state, metrics)``.

    With ``config.num_micro_batches`` > 1, gradients are accumulated over that
    many slices of the batch and give the same update as the whole batch at
    once. The state argument is donated.
    """
    num_micro_batches = config.num_micro_batches

    def loss_fn(params, micro):
        prompts, targets, mask, weights = micro
        return sft_loss(nnx.merge(graphdef, params), prompts, targets, mask, weights, config.logits_chunk_size)

    def step(state: train_state.TrainState, prompts: Prompts, targets, target_mask):
        mask = jnp.asarray(target_mask, jnp.float32)
        weights = mask / jnp.maximum(mask.sum(), 1.0)
        micro = (
            prompts.split(num_micro_batches),
            *train_state.split_micro_batches((targets, target_mask, weights), num_micro_batches),
        )
        shares = train_state.token_shares(mask, num_micro_batches)  # nll_per_token is a per-token mean
        loss, grads, metrics = train_state.accumulate_gradients(loss_fn, state.params, micro, shares)
        metrics["target_tokens"] = mask.sum()
        state, update_metrics = train_state.apply_gradients(state, grads, loss, optimizer)
        return state, {"loss": loss, **metrics, **update_metrics}

    return jax.jit(step, donate_argnums=0)
