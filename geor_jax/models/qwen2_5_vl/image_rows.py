"""One image per prompt row, in a fixed-size patch slot: the vision layout computed in the graph.

Native-resolution batches give every row its own image grid. Static grids
(``vision_layout``) compile once per tuple of grids, which a stream of mixed
sizes never repeats. Here row r's patches sit in a slot of L patches
(``pixel_values`` (B, L, patch_dim): the first t*h*w are the image in the
processor's order, the rest padding) and the window order, rotary positions,
attention masks and M-RoPE offsets are integer arithmetic on the (B, 3) grid
array under jit, so one compile serves every mix of grids that fits the slot.

Padding patches are never attended to by real ones (they are masked as
keys), so real outputs equal the static-grid path's; what padding computes is
dropped.

Windowed layers attend within "neighbourhood chunks": window-order tokens are
cut into chunks of one full window (64 patches for Qwen2.5-VL) and each chunk
attends to itself and its two neighbours under a same-window mask. A window
is contiguous and at most one chunk long, so it always lies inside those
three chunks: no per-batch window count has to be known when compiling, for
3x the (small) score FLOPs of exact windows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from geor_jax.models.qwen2_5_vl import layers
from geor_jax.models.qwen2_5_vl.config import Qwen2VLConfig, VisionConfig


def is_rows(pixel_values) -> bool:
    """Whether ``pixel_values`` is laid out one image per row, (B, L, patch_dim)."""
    return pixel_values is not None and pixel_values.ndim == 3


@struct.dataclass
class RowLayout:
    """Index tables of a (B, L) slot batch; "window order" makes every attention window contiguous.

    order: (B, L) the input slot of each window-order slot (padding stays in place, after the image).
    positions: (B, L, 2) (row, col) in patches of each window-order slot.
    window_id: (B, L) window of each window-order slot (-1 on padding).
    valid: (B, L) window-order slot holds a real patch.
    unit_restore: (B, L / merge_unit) the window-order unit of each input unit.
    """

    order: jax.Array
    positions: jax.Array
    window_id: jax.Array
    valid: jax.Array
    unit_restore: jax.Array


def _ceil_div(a, b):
    return -(-a // b)


def row_layout(grid_thw: jax.Array, length: int, config: VisionConfig) -> RowLayout:
    """The ``RowLayout`` of slots of ``length`` patches holding images of ``grid_thw`` (B, 3) (t, h, w)."""
    merge, unit = config.spatial_merge_size, config.merge_unit
    if length % unit:
        raise ValueError(f"patch slot of {length} patches is not a whole number of {unit}-patch merge units")
    grid = jnp.asarray(grid_thw, jnp.int32)
    t, h, w = (grid[:, i : i + 1] for i in range(3))  # (B, 1) each
    gh, gw = h // merge, jnp.maximum(w // merge, 1)
    per_frame = jnp.maximum(gh * gw, 1)
    units = jnp.arange(length // unit, dtype=jnp.int32)[None]  # (1, U)
    real = units < t * gh * gw
    frame, rest = units // per_frame, units % per_frame
    row, col = rest // gw, rest % gw
    if config.uses_windows:
        win = config.window_size // config.patch_size // merge  # window side in merged units
        wr, wc = row // win, col // win
        rows_in = jnp.minimum(win, gh - wr * win)  # the last window row / column may be short
        cols_in = jnp.minimum(win, gw - wc * win)
        # Windows run row-major over the unit grid; windows above are full height, those to the left full width.
        window_order = (frame * per_frame + wr * win * gw + rows_in * win * wc + (row % win) * cols_in + col % win)
        windows_per_row = _ceil_div(gw, win)
        window = frame * _ceil_div(gh, win) * windows_per_row + wr * windows_per_row + wc
    else:  # Qwen2-VL: no windows, input order is window order
        window_order, window = units, frame
    window_order = jnp.where(real, window_order, units)
    batch = jnp.arange(grid.shape[0])[:, None]
    unit_order = jnp.zeros_like(window_order).at[batch, window_order].set(jnp.broadcast_to(units, window_order.shape))
    sub = jnp.arange(unit, dtype=jnp.int32)
    order = (unit_order[..., None] * unit + sub).reshape(grid.shape[0], length)
    pick = lambda a: jnp.take_along_axis(a, unit_order, axis=1)  # noqa: E731  per input unit -> per window-order unit
    patch_row = pick(row)[..., None] * merge + sub // merge
    patch_col = pick(col)[..., None] * merge + sub % merge
    positions = jnp.stack([patch_row, patch_col], axis=-1).reshape(grid.shape[0], length, 2)
    window_id = jnp.repeat(jnp.where(pick(real), pick(window), -1), unit, axis=1)
    return RowLayout(order=order, positions=positions, window_id=window_id, valid=window_id >= 0,
                     unit_restore=window_order)


def vision_rope_rows(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos/sin (..., head_dim) of the 2-D rotary embedding at traced (..., 2) patch positions.

    Same angles as ``rope.vision_rope`` (which tabulates them on the host for
    static grids). The tables pass an optimisation barrier so XLA computes
    them once instead of fusing the transcendentals into every consumer.
    """
    quarter = head_dim // 4
    inv_freq = 1.0 / (theta ** (np.arange(quarter, dtype=np.float32) * 2 / (head_dim // 2)))
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = angles.reshape(angles.shape[:-2] + (2 * quarter,))
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jax.lax.optimization_barrier((jnp.cos(angles), jnp.sin(angles)))


@struct.dataclass
class RowAttention:
    """Which keys each query of a (B, L) slot batch attends to, in window order.

    ``window_id`` (B, L), -1 on padding. ``chunk`` 0: full attention over the
    row's real patches (one frame: rows hold still images, t = 1, as the data
    pipeline makes them); > 0: windows of at most ``chunk`` tokens, attended
    through neighbourhood chunks (see the module docstring).
    """

    window_id: jax.Array
    chunk: int = struct.field(pytree_node=False, default=0)

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        """Attention of (B, L, heads, head_dim) q / k / v; returns q's shape."""
        if not self.chunk:
            return layers.dot_product_attention(q, k, v, (self.window_id >= 0)[:, None, :])
        return _neighbourhood_attention(q, k, v, self.window_id, self.chunk)


def _neighbourhood_attention(q, k, v, window_id, chunk: int):
    batch, length = window_id.shape
    chunks = _ceil_div(length, chunk)
    pad = chunks * chunk - length

    def chunked(x, fill):  # (B, L, ...) -> (B, chunks, chunk, ...)
        x = jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=fill)
        return x.reshape((batch, chunks, chunk) + x.shape[2:])

    def neighbours(x, fill):  # (B, chunks, chunk, ...) -> (B, chunks, 3 * chunk, ...): chunks c-1, c, c+1
        edge = jnp.full_like(x[:, :1], fill)
        before = jnp.concatenate([edge, x[:, :-1]], axis=1)
        after = jnp.concatenate([x[:, 1:], edge], axis=1)
        return jnp.concatenate([before, x, after], axis=2)

    ids = chunked(window_id, -1)
    key_ids = neighbours(ids, -1)
    mask = (ids[..., :, None] == key_ids[..., None, :]) & (key_ids[..., None, :] >= 0)
    flat = lambda x: x.reshape((batch * chunks,) + x.shape[2:])  # noqa: E731
    out = layers.dot_product_attention(flat(chunked(q, 0)), flat(neighbours(chunked(k, 0), 0)),
                                       flat(neighbours(chunked(v, 0), 0)), flat(mask))
    return out.reshape((batch, chunks * chunk) + out.shape[2:])[:, :length]


def merge_row_embeddings(text_embeds: jax.Array, input_ids: jax.Array, image_embeds: jax.Array,
                         image_token_id: int) -> jax.Array:
    """Row r's j-th image token takes ``image_embeds[r, j]`` (the row's merged units in input order)."""
    is_image = input_ids == image_token_id
    index = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, image_embeds.shape[1] - 1)
    picked = jnp.take_along_axis(image_embeds, index[..., None], axis=1)
    return jnp.where(is_image[..., None], picked.astype(text_embeds.dtype), text_embeds)


def row_mrope_positions(input_ids: jax.Array, attention_mask: jax.Array, grid_thw: jax.Array,
                        config: Qwen2VLConfig) -> tuple[jax.Array, jax.Array]:
    """``rope.mrope_positions`` for one image per row with per-row grids ``grid_thw`` (B, 3) (traced).

    The image's tokens get ``start + (frame, row, col)`` in merged units and
    the text after it starts ``max(h, w)`` (merged) later, as in the static path.
    """
    merge = config.vision.spatial_merge_size
    valid = attention_mask.astype(bool)
    is_image = (input_ids == config.image_token_id) & valid
    grid = jnp.asarray(grid_thw, jnp.int32)
    t, gh, gw = grid[:, 0:1], grid[:, 1:2] // merge, jnp.maximum(grid[:, 2:3] // merge, 1)
    per_frame = jnp.maximum(gh * gw, 1)
    index = jnp.cumsum(is_image, axis=1) - 1  # the image's j-th token
    rest = index % per_frame
    offsets = jnp.stack([index // per_frame, rest // gw, rest % gw])  # (3, B, S)
    last = is_image & (index == t * gh * gw - 1)
    step = jnp.where(is_image, jnp.where(last, jnp.maximum(gh, gw), 0), valid.astype(jnp.int32))
    start = jnp.cumsum(step, axis=1) - step
    positions = jnp.where(valid[None], start[None] + jnp.where(is_image[None], offsets, 0), 0)
    return positions.astype(jnp.int32), jnp.sum(step, axis=1).astype(jnp.int32)
