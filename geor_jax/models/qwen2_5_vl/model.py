"""The full Qwen2.5-VL / Qwen2-VL model: vision tower + text decoder + LM head.

Image embeddings replace the image-pad tokens in order (row-major over the
batch), found with a cumulative-sum gather so shapes stay static. The model is
``nnx.split``/``nnx.merge`` friendly; every input the sampler or a loss needs
(positions, padding mask, KV cache) is explicit and the cache is returned,
not stored on the module.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx, struct

from geor_jax.models.qwen2_5_vl import image_rows, layers
from geor_jax.models.qwen2_5_vl.cache import KVCache
from geor_jax.models.qwen2_5_vl.config import Qwen2VLConfig
from geor_jax.models.qwen2_5_vl.rope import Grid, mrope_positions, static_grids
from geor_jax.models.qwen2_5_vl.text import TextDecoder
from geor_jax.models.qwen2_5_vl.vision import VisionTower


@struct.dataclass
class ModelOutput:
    """logits: (batch, seq, vocab) float32; cache: the updated cache, or None."""

    logits: jax.Array
    cache: KVCache | None = None


def merge_image_embeddings(text_embeds: jax.Array, input_ids: jax.Array, image_embeds: jax.Array, image_token_id: int) -> jax.Array:
    """Put the i-th image embedding at the i-th image token (counting row-major over the batch)."""
    is_image = input_ids == image_token_id
    row = jnp.cumsum(is_image.reshape(-1)) - 1
    row = jnp.clip(row, 0, image_embeds.shape[0] - 1).reshape(input_ids.shape)
    return jnp.where(is_image[..., None], image_embeds[row].astype(text_embeds.dtype), text_embeds)


def token_logprobs(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position: logits (batch, seq, vocab), targets (batch, seq) -> (batch, seq) float32."""
    logits = logits.astype(jnp.float32)
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


class Qwen2VL(nnx.Module):
    """Qwen2.5-VL (or Qwen2-VL, by ``config.model_type``) for conditional generation.

    ``dtype`` is the compute dtype, ``param_dtype`` the storage dtype;
    ``remat`` rematerialises each block in the backward pass; ``scan_layers``
    stacks the text layers and runs them with ``lax.scan``.
    """

    def __init__(
        self,
        config: Qwen2VLConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        scan_layers: bool = False,
        rngs: nnx.Rngs,
    ):
        self.config = config
        self.vision = VisionTower(config.vision, dtype=dtype, param_dtype=param_dtype, remat=remat, rngs=rngs)
        self.text = TextDecoder(
            config.text, dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers, rngs=rngs
        )
        if config.text.tie_word_embeddings:
            self.lm_head = None
        else:
            self.lm_head = layers.Dense(
                (config.text.hidden_size,), (config.text.vocab_size,), ("embed",), ("vocab",),
                use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            )

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for ``batch`` rows of up to ``max_len`` tokens, laid out for this model."""
        return self.text.init_cache(batch, max_len)

    def embed(self, input_ids: jax.Array, pixel_values: jax.Array | None = None,
              image_grid_thw: tuple[Grid, ...] | jax.Array = ()) -> jax.Array:
        """(batch, seq) ids (+ image patches) -> (batch, seq, hidden) input embeddings.

        ``pixel_values`` (num_patches, patch_dim) with static ``image_grid_thw``
        grids, or (batch, L, patch_dim) one image per row with (batch, 3) grids
        (``image_rows``).
        """
        embeds = self.text.embed(input_ids)
        if image_rows.is_rows(pixel_values):
            image_embeds = self.vision.rows(pixel_values, image_grid_thw)
            return image_rows.merge_row_embeddings(embeds, input_ids, image_embeds, self.config.image_token_id)
        if pixel_values is None or not image_grid_thw:
            return embeds
        image_embeds = self.vision(pixel_values, image_grid_thw)
        return merge_image_embeddings(embeds, input_ids, image_embeds, self.config.image_token_id)

    def hidden_states(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        pixel_values: jax.Array | None = None,
        image_grid_thw: tuple[Grid, ...] | jax.Array = (),
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-norm hidden states (batch, seq, hidden) and the updated cache.

        ``positions`` default to the 3-D M-RoPE positions of ``input_ids``
        (images as given by ``image_grid_thw``), offset by the cache's
        ``next_position``, so prefill and decode steps need no position
        bookkeeping by the caller. ``image_grid_thw`` is static (a tuple of
        grids) for 2-D ``pixel_values``, and a (batch, 3) array (traced) for
        one image per row in (batch, L, patch_dim) slots.
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        rows = image_rows.is_rows(pixel_values)
        if not rows:
            image_grid_thw = static_grids(image_grid_thw)
        valid = attention_mask > 0
        if positions is None:
            position_fn = image_rows.row_mrope_positions if rows else mrope_positions
            positions, advance = position_fn(input_ids, attention_mask, image_grid_thw, self.config)
            offset = 0 if cache is None else cache.next_position[None, :, None]
            positions = jnp.where(valid[None], positions + offset, 0)
            next_position = advance if cache is None else advance + cache.next_position
        else:
            next_position = jnp.max(jnp.where(valid[None], positions, -1), axis=(0, 2)) + 1
        embeds = self.embed(input_ids, pixel_values, image_grid_thw)
        hidden, new_cache = self.text(embeds, positions, attention_mask, cache)
        if new_cache is not None:
            has_tokens = jnp.any(valid, axis=1)
            new_cache = new_cache.replace(next_position=jnp.where(has_tokens, next_position, cache.next_position))
        return hidden, new_cache

    def logits(self, hidden: jax.Array) -> jax.Array:
        """LM head (tied to the embedding if configured); float32 logits.

        One 2-D matmul over the flattened tokens (see ``layers.Dense`` for why).
        """
        tied = self.lm_head is None
        kernel = self.text.embed_tokens[...] if tied else self.lm_head.kernel[...]
        operand = layers.matmul_dtype(kernel.dtype, hidden.dtype)
        tokens, kernel = hidden.reshape(-1, hidden.shape[-1]).astype(operand), kernel.astype(operand)
        # The tied table is (vocab, hidden): contract its second axis, not its first.
        logits = jnp.einsum("td,vd->tv" if tied else "td,dv->tv", tokens, kernel, preferred_element_type=jnp.float32)
        return logits.reshape(hidden.shape[:-1] + (logits.shape[-1],))

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        *,
        pixel_values: jax.Array | None = None,
        image_grid_thw: tuple[Grid, ...] | jax.Array = (),
        positions: jax.Array | None = None,
        cache: KVCache | None = None,
    ) -> ModelOutput:
        """Logits for every position (see ``hidden_states`` for the arguments)."""
        hidden, cache = self.hidden_states(
            input_ids, attention_mask, pixel_values=pixel_values, image_grid_thw=image_grid_thw, positions=positions, cache=cache
        )
        return ModelOutput(logits=self.logits(hidden), cache=cache)
