"""Rotary position embeddings: 3-D multimodal RoPE for the text decoder and
2-D axial RoPE for the vision tower.

Text positions follow Qwen2-VL's rule: a text token advances the position by
one; an image with an (h, w) merged grid gives its tokens positions
``start + (t, row, col)`` on the three axes and advances the position by
``max(h, w)``. ``mrope_positions`` computes this for a whole padded batch with
cumulative sums, so it runs under jit with static shapes and any number of
images of different sizes per sample.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geor_jax.models.qwen2_5_vl.config import Qwen2VLConfig, TextConfig

Grid = tuple[int, int, int]


def static_grids(grids) -> tuple[Grid, ...]:
    """Image grids as a tuple of int triples: hashable, so usable as a static jit argument."""
    return tuple(tuple(int(v) for v in g) for g in grids)


@functools.lru_cache(maxsize=64)
def image_token_table(grids: tuple[Grid, ...], merge: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image token (all images, in order): (t, row, col) offsets, whether it
    is the image's last token, and the position advance of its image.

    Grids are (t, h, w) in patches, as in ``image_grid_thw``; tokens are the
    merged ``merge x merge`` patch groups the language model sees.
    """
    offsets, is_last, advance = [], [], []
    for t, h, w in grids:
        gh, gw = h // merge, w // merge
        tt, hh, ww = np.meshgrid(np.arange(t), np.arange(gh), np.arange(gw), indexing="ij")
        offsets.append(np.stack([tt.ravel(), hh.ravel(), ww.ravel()], axis=-1))
        last = np.zeros(t * gh * gw, dtype=bool)
        last[-1] = True
        is_last.append(last)
        advance.append(np.full(t * gh * gw, max(gh, gw)))
    if not grids:
        return np.zeros((1, 3), np.int32), np.zeros((1,), bool), np.zeros((1,), np.int32)
    return (
        np.concatenate(offsets).astype(np.int32),
        np.concatenate(is_last),
        np.concatenate(advance).astype(np.int32),
    )


def mrope_positions(
    input_ids: jax.Array,
    attention_mask: jax.Array,
    image_grid_thw: tuple[Grid, ...],
    config: Qwen2VLConfig,
) -> tuple[jax.Array, jax.Array]:
    """3-D positions for a (left- or right-) padded batch.

    Args:
      input_ids: (batch, seq) token ids, image tokens marked by
        ``config.image_token_id`` (one per merged patch group).
      attention_mask: (batch, seq), 1 for real tokens, 0 for padding.
      image_grid_thw: static (t, h, w) patch grid of every image, in the order
        the images appear in the batch (row-major), as transformers expects.

    Returns:
      positions: (3, batch, seq) int32; padding gets 0.
      next_position: (batch,) int32, the position of the first token after
        the sequence (what a decode step continues from).
    """
    valid = attention_mask.astype(bool)
    # Without images every token is text, even one whose id is the image pad.
    is_image = (input_ids == config.image_token_id) & valid & bool(image_grid_thw)
    offsets, is_last, advance = (jnp.asarray(a) for a in image_token_table(tuple(image_grid_thw), config.vision.spatial_merge_size))
    num_image_tokens = offsets.shape[0] if image_grid_thw else 0
    image_row = jnp.cumsum(is_image.reshape(-1)) - 1
    image_row = jnp.clip(image_row, 0, max(num_image_tokens - 1, 0)).reshape(input_ids.shape)
    step = jnp.where(is_image, jnp.where(is_last[image_row], advance[image_row], 0), valid.astype(jnp.int32))
    start = jnp.cumsum(step, axis=1) - step
    image_offsets = jnp.where(is_image[None], jnp.moveaxis(offsets[image_row], -1, 0), 0)
    positions = jnp.where(valid[None], start[None] + image_offsets, 0)
    return positions.astype(jnp.int32), jnp.sum(step, axis=1).astype(jnp.int32)


def text_rope(positions: jax.Array, config: TextConfig) -> tuple[jax.Array, jax.Array]:
    """cos/sin (batch, seq, head_dim) for 3-D positions (3, batch, seq).

    Frequency ``i`` of the half head takes its angle from the temporal, height
    or width position according to ``mrope_section``.
    """
    half = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, half, dtype=np.float32) * 2 / config.head_dim))
    section_of_freq = np.repeat(np.arange(3), config.mrope_section)
    pos = jnp.moveaxis(positions.astype(jnp.float32)[section_of_freq], 0, -1)  # (batch, seq, half)
    angles = pos * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


@functools.lru_cache(maxsize=64)
def vision_patch_positions(grids: tuple[Grid, ...], merge: int) -> np.ndarray:
    """(num_patches, 2) row/col of every input patch, in the processor's
    patch order (merge x merge blocks laid out contiguously)."""
    out = []
    for t, h, w in grids:
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        shape = (h // merge, merge, w // merge, merge)
        rows = rows.reshape(shape).transpose(0, 2, 1, 3).ravel()
        cols = cols.reshape(shape).transpose(0, 2, 1, 3).ravel()
        out.append(np.tile(np.stack([rows, cols], axis=-1), (t, 1)))
    return np.concatenate(out).astype(np.int32)


def vision_rope(patch_positions: np.ndarray, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin (num_patches, head_dim) float32 of the axial 2-D rotary embedding:
    the first quarter of frequencies rotate by row, the second by column,
    repeated for the rotate-half pairing.

    Computed on the host with numpy: the patch positions are static, and as
    traced ``jnp.cos``/``jnp.sin`` XLA CPU fused the transcendentals into
    every consumer (q and k rotations of each block, forward and backward),
    recomputing them per head instead of reading a table.
    """
    quarter = head_dim // 4
    inv_freq = 1.0 / (theta ** (np.arange(quarter, dtype=np.float32) * 2 / (head_dim // 2)))
    angles = np.asarray(patch_positions).astype(np.float32)[..., None] * inv_freq.astype(np.float32)  # (n, 2, quarter)
    angles = angles.reshape(angles.shape[0], 2 * quarter)
    angles = np.concatenate([angles, angles], axis=-1)
    return np.cos(angles), np.sin(angles)
