"""Per-token log-probabilities of continuations (answers, completions) after image prompts.

SFT and GRPO both need ``log p(continuation token | image, prompt, earlier
tokens)`` and nothing else: the LM head runs only on the positions that
predict continuation tokens. With ``group_size`` G, each of the B prompts is
followed by G continuations (rows group-major, as the sampler returns them).

``shared_prompt=True`` runs each prompt (vision tower + prompt tokens) once
and lets its G continuations attend to its cached keys/values, instead of G
full forwards over repeated prompts: the same values and gradients (the
cache is differentiable) for about 1/G of the prompt FLOPs.

The LM head and log-softmax run over ``logits_chunk_size`` continuation
positions at a time, rematerialised in the backward pass
(``lm_head_logprobs``): the (rows, C, vocab) float32 logits, 10 GB for
Qwen2.5-VL-7B at 64 rows x 256 tokens, never exist at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.rollout import Prompts

# Continuation positions per LM head chunk: (rows, 128, vocab) logits at a time.
DEFAULT_LOGITS_CHUNK_SIZE = 128


def continuation_logprobs(
    model: qvl.Qwen2VL,
    prompts: Prompts,
    tokens: jax.Array,
    mask: jax.Array,
    *,
    group_size: int = 1,
    temperature: float = 1.0,
    shared_prompt: bool = False,
    logits_chunk_size: int | None = DEFAULT_LOGITS_CHUNK_SIZE,
) -> jax.Array:
    """log p of each continuation token, (B * G, C) float32.

    tokens/mask: (B * G, C) continuations, right-padded (mask 0 after the
    end). Logits are divided by ``temperature`` first, so logprobs match a
    sampler that drew at that temperature. Positions where ``mask`` is 0 hold
    finite garbage: weight them out. ``logits_chunk_size``: positions per LM
    head chunk (``lm_head_logprobs``; None or 0: all at once).
    """
    batch, prompt_len = prompts.tokens.shape
    if tokens.shape[0] != batch * group_size:
        raise ValueError(f"{tokens.shape[0]} continuations for {batch} prompts x group_size {group_size}")
    if not prompts.matches_grids():
        raise ValueError(f"pixel_values rows do not match the image grids {prompts.grids}")
    if shared_prompt:
        hidden = _shared_prompt_hidden(model, prompts, tokens, mask, group_size)
    else:
        full = prompts.repeat(group_size)
        hidden, _ = model.hidden_states(
            jnp.concatenate([full.tokens, tokens], axis=1),
            jnp.concatenate([full.mask, mask], axis=1),
            pixel_values=full.pixel_values,
            image_grid_thw=full.image_grid_thw,
        )
        # Position P - 1 + i predicts continuation token i.
        hidden = hidden[:, prompt_len - 1 : prompt_len - 1 + tokens.shape[1]]
    return lm_head_logprobs(model, hidden, tokens, temperature=temperature, chunk_size=logits_chunk_size)


def _shared_prompt_hidden(model, prompts, tokens, mask, group_size):
    """Final hidden states predicting each continuation token, the prompts run once per group."""
    batch, prompt_len = prompts.tokens.shape
    cache = model.init_cache(batch, prompt_len + tokens.shape[1])
    prompt_hidden, cache = model.hidden_states(
        prompts.tokens, prompts.mask, pixel_values=prompts.pixel_values, image_grid_thw=prompts.image_grid_thw,
        cache=cache
    )
    first = jnp.repeat(prompt_hidden[:, -1:], group_size, axis=0)
    hidden, _ = model.hidden_states(tokens, mask, cache=qvl.repeat_rows(cache, group_size))
    return jnp.concatenate([first, hidden[:, :-1]], axis=1)


def lm_head_logprobs(
    model: qvl.Qwen2VL,
    hidden: jax.Array,
    targets: jax.Array,
    *,
    temperature: float = 1.0,
    chunk_size: int | None = DEFAULT_LOGITS_CHUNK_SIZE,
) -> jax.Array:
    """log p(targets) from final hidden states, (rows, C) float32.

    hidden: (rows, C, hidden_size), position i predicting ``targets[:, i]``.
    LM head -> / temperature -> log-softmax -> the target's entry, over
    ``chunk_size`` positions at a time (``lax.map``), each chunk under
    ``jax.checkpoint``: the forward keeps no logits and the backward
    recomputes one chunk's, so at most (rows, chunk_size, vocab) logits and
    their gradient exist at once instead of (rows, C, vocab). C need not be a
    multiple of ``chunk_size`` (the last chunk is zero-padded and its padding
    sliced off). ``chunk_size`` None or 0: one pass over all positions.
    """
    if chunk_size is not None and chunk_size < 0:
        raise ValueError(f"logits chunk_size={chunk_size}: must be a number of positions >= 1, or 0 / None for "
                         "no chunking")
    rows, length = targets.shape
    if not chunk_size:
        return qvl.token_logprobs(model.logits(hidden) / temperature, targets)
    chunk_size = min(chunk_size, length)
    num_chunks = -(-length // chunk_size)
    pad = num_chunks * chunk_size - length
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # (num_chunks, rows, chunk_size, ...): lax.map walks the leading axis.
    hidden = hidden.reshape(rows, num_chunks, chunk_size, -1).swapaxes(0, 1)
    targets = targets.reshape(rows, num_chunks, chunk_size).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(hidden_chunk, target_chunk):
        return qvl.token_logprobs(model.logits(hidden_chunk) / temperature, target_chunk)

    logp = jax.lax.map(lambda xs: chunk(*xs), (hidden, targets))
    return logp.swapaxes(0, 1).reshape(rows, -1)[:, :length]
