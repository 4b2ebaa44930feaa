"""Vision tower of Qwen2.5-VL / Qwen2-VL in Flax NNX.

Input is what the HF image processor produces: flattened patches
(num_patches, channels * temporal_patch * patch * patch) of all images
concatenated, plus the static tuple of (t, h, w) grids. Output is one
embedding per merged 2x2 patch group, in input order, ready to replace the
image-pad tokens of the text.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from geor_jax import sharding
from geor_jax.models.qwen2_5_vl import image_rows, layers
from geor_jax.models.qwen2_5_vl.config import VisionConfig
from geor_jax.models.qwen2_5_vl.rope import Grid, static_grids, vision_rope
from geor_jax.models.qwen2_5_vl.vision_layout import SegmentLayout, vision_layout


def to_segments(x: jax.Array, layout: SegmentLayout) -> jax.Array:
    """(tokens, ...) -> (segments, length, ...)."""
    if layout.gather is None:
        return x.reshape((layout.num_segments, layout.length) + x.shape[1:])
    return x[layout.gather]


def from_segments(x: jax.Array, layout: SegmentLayout) -> jax.Array:
    """(segments, length, ...) -> (tokens, ...), dropping padding slots."""
    flat = x.reshape((layout.num_segments * layout.length,) + x.shape[2:])
    return flat if layout.scatter is None else flat[layout.scatter]


class VisionAttention(nnx.Module):
    """Multi-head self-attention with 2-D rotary embedding, within segments."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
        d, h, hd = config.hidden_size, config.num_heads, config.head_dim
        kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.qkv = layers.Dense((d,), (3, h, hd), ("vision_embed",), (None, "vision_heads", "head_dim"), **kw)
        self.proj = layers.Dense((h, hd), (d,), ("vision_heads", "head_dim"), ("vision_embed",), **kw)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 layout: SegmentLayout | image_rows.RowAttention) -> jax.Array:
        """x: (tokens, hidden) with a static ``SegmentLayout``, or (B, L, hidden) slots with a ``RowAttention``."""
        qkv = self.qkv(x)  # (..., tokens, 3, heads, head_dim)
        q = layers.apply_rotary(qkv[..., 0, :, :], cos, sin)
        k = layers.apply_rotary(qkv[..., 1, :, :], cos, sin)
        if isinstance(layout, image_rows.RowAttention):
            return self.proj(layout(q, k, qkv[..., 2, :, :]))
        q, k, v = (to_segments(a, layout) for a in (q, k, qkv[:, 2]))
        mask = None if layout.valid is None else jnp.asarray(layout.valid)[:, None, :]
        out = layers.dot_product_attention(q, k, v, mask)
        return self.proj(from_segments(out, layout))


class VisionBlock(nnx.Module):
    """Pre-norm transformer block (RMSNorm + SwiGLU for 2.5, LayerNorm + QuickGELU for 2)."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
        norm = layers.RMSNorm if config.uses_windows else layers.LayerNorm
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = norm(config.hidden_size, "vision_embed", eps=config.norm_eps, **kw)
        self.norm2 = norm(config.hidden_size, "vision_embed", eps=config.norm_eps, **kw)
        self.attn = VisionAttention(config, **kw)
        if config.uses_windows:
            self.mlp = layers.GatedMLP(
                config.hidden_size, config.intermediate_size, "vision_embed", "vision_mlp",
                act=config.hidden_act, use_bias=True, **kw,
            )
        else:
            self.mlp = layers.PlainMLP(
                config.hidden_size, config.intermediate_size, "vision_embed", "vision_mlp", act=config.hidden_act, **kw
            )

    def __call__(self, x, cos, sin, layout: SegmentLayout | image_rows.RowAttention):
        x = x + self.attn(self.norm1(x), cos, sin, layout)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
    """Normalise, concatenate each 2x2 group of patches and project to the text width."""

    def __init__(self, config: VisionConfig, *, dtype, param_dtype, rngs):
        norm = layers.RMSNorm if config.uses_windows else layers.LayerNorm
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.unit = config.merge_unit
        merged = config.hidden_size * self.unit
        self.ln_q = norm(config.hidden_size, "vision_embed", eps=config.norm_eps, **kw)
        self.fc1 = layers.Dense((merged,), (merged,), ("vision_merged",), ("vision_mlp",), use_bias=True, **kw)
        self.fc2 = layers.Dense((merged,), (config.out_hidden_size,), ("vision_mlp",), ("embed",), use_bias=True, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., tokens, hidden) -> (..., tokens / merge_unit, out_hidden_size)."""
        x = self.ln_q(x).reshape(x.shape[:-2] + (-1, x.shape[-1] * self.unit))
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    """Patch embedding, rotary transformer blocks and patch merger."""

    def __init__(self, config: VisionConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat: bool = False, rngs: nnx.Rngs):
        self.config = config
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.patch_embed = layers.Dense(
            (config.patch_dim,), (config.hidden_size,), ("vision_patch",), ("vision_embed",), use_bias=False, **kw
        )
        self.blocks = nnx.List([VisionBlock(config, **kw) for _ in range(config.depth)])
        self.merger = PatchMerger(config, **kw)
        self.remat = remat

    def __call__(self, pixel_values: jax.Array, grid_thw: tuple[Grid, ...]) -> jax.Array:
        """(num_patches, patch_dim) patches -> (num_patches / merge_unit, out_hidden_size)."""
        config = self.config
        grid_thw = static_grids(grid_thw)
        layout = vision_layout(grid_thw, config)
        x = self.patch_embed(pixel_values)
        if layout.token_order is not None:
            x = x[layout.token_order]
        # Patches split over devices (whole images each when they divide evenly), not the width.
        x = sharding.constrain(x, ("batch", None))
        cos, sin = vision_rope(layout.patch_positions, config.head_dim, config.rope_theta)

        def run_block(block, x, cos, sin, layout):
            return block(x, cos, sin, layout)

        if self.remat:
            run_block = nnx.remat(run_block, static_argnums=(4,))
        for index, block in enumerate(self.blocks):
            block_layout = layout.full if index in config.fullatt_block_indexes else layout.window
            x = run_block(block, x, cos, sin, block_layout)
        merged = self.merger(x)
        if layout.unit_restore is not None:
            merged = merged[layout.unit_restore]
        return merged

    def rows(self, pixel_values: jax.Array, grid_thw: jax.Array) -> jax.Array:
        """One image per row: (B, L, patch_dim) slots and their (B, 3) grids -> (B, L / merge_unit, out_hidden_size).

        Row r's first t*h*w/merge_unit outputs are its image's merged patches in
        input order (what its image tokens take); the rest come from padding.
        The layout is traced from ``grid_thw`` (``image_rows``): one compile per
        slot length, whatever the grids.
        """
        config = self.config
        layout = image_rows.row_layout(grid_thw, pixel_values.shape[1], config)
        x = self.patch_embed(pixel_values)
        x = sharding.constrain(jnp.take_along_axis(x, layout.order[..., None], axis=1), ("batch", None, None))
        cos, sin = image_rows.vision_rope_rows(layout.positions, config.head_dim, config.rope_theta)
        window_tokens = (config.window_size // config.patch_size) ** 2 if config.uses_windows else 0
        full = image_rows.RowAttention(layout.window_id)
        window = image_rows.RowAttention(layout.window_id, chunk=window_tokens) if window_tokens else full

        def run_block(block, x, cos, sin, attention):
            return block(x, cos, sin, attention)

        if self.remat:
            run_block = nnx.remat(run_block)
        for index, block in enumerate(self.blocks):
            x = run_block(block, x, cos, sin, full if index in config.fullatt_block_indexes else window)
        return jnp.take_along_axis(self.merger(x), layout.unit_restore[..., None], axis=1)
