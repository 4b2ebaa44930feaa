"""Host-side index tables for the vision tower, computed once per image-grid tuple.

Attention in the vision tower is block-diagonal: full-attention layers attend
within one frame of one image, windowed layers (Qwen2.5-VL) within a window of
``window_size`` pixels. With the grids known statically, each layer's blocks
become a dense (segments, segment_len) layout: a reshape when every block is
contiguous and equally long (the common case of same-size images), otherwise
a gather into zero-padded segments with a key mask and a gather back.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from geor_jax.models.qwen2_5_vl.config import VisionConfig
from geor_jax.models.qwen2_5_vl.rope import Grid, vision_patch_positions


@dataclasses.dataclass(frozen=True, eq=False)
class SegmentLayout:
    """How ``num_tokens`` tokens split into ``num_segments`` attention blocks.

    ``gather`` (segments, length) indexes tokens (padding slots point at token 0
    and are masked by ``valid``); ``scatter`` (num_tokens,) indexes the flattened
    segments back into token order. Both are None for the reshape case.
    """

    num_segments: int
    length: int
    gather: np.ndarray | None = None
    valid: np.ndarray | None = None
    scatter: np.ndarray | None = None


def segment_layout(lengths: list[int]) -> SegmentLayout:
    """Layout for consecutive blocks of the given token counts."""
    lengths = [n for n in lengths if n > 0]
    if len(set(lengths)) == 1:
        return SegmentLayout(num_segments=len(lengths), length=lengths[0])
    longest = max(lengths)
    gather = np.zeros((len(lengths), longest), np.int32)
    valid = np.zeros((len(lengths), longest), bool)
    scatter = np.zeros(sum(lengths), np.int32)
    start = 0
    for s, n in enumerate(lengths):
        gather[s, :n] = np.arange(start, start + n)
        valid[s, :n] = True
        scatter[start : start + n] = s * longest + np.arange(n)
        start += n
    return SegmentLayout(num_segments=len(lengths), length=longest, gather=gather, valid=valid, scatter=scatter)


@dataclasses.dataclass(frozen=True, eq=False)
class VisionLayout:
    """Everything the vision tower needs to know about a tuple of grids.

    Tokens run in *window order*: ``token_order`` (or identity when None)
    permutes the input patches so every window is contiguous, ``unit_restore``
    puts the merged outputs back in input order.
    """

    token_order: np.ndarray | None
    unit_restore: np.ndarray | None
    patch_positions: np.ndarray
    window: SegmentLayout
    full: SegmentLayout


def _window_order(grid: Grid, config: VisionConfig) -> tuple[np.ndarray, list[int]]:
    """Merged-unit permutation that makes windows contiguous, and the windows' sizes (in units)."""
    t, h, w = grid
    merge = config.spatial_merge_size
    gh, gw = h // merge, w // merge
    win = config.window_size // merge // config.patch_size
    units = np.arange(t * gh * gw).reshape(t, gh, gw)
    order, sizes = [], []
    for frame in range(t):
        for r0 in range(0, gh, win):
            for c0 in range(0, gw, win):
                block = units[frame, r0 : r0 + win, c0 : c0 + win].ravel()
                order.append(block)
                sizes.append(block.size)
    return np.concatenate(order), sizes


@functools.lru_cache(maxsize=64)
def vision_layout(grids: tuple[Grid, ...], config: VisionConfig) -> VisionLayout:
    """Index tables for ``grids`` (static (t, h, w) patch grids, in input order)."""
    unit = config.merge_unit
    positions = vision_patch_positions(grids, config.spatial_merge_size)
    frame_sizes = [h * w for t, h, w in grids for _ in range(t)]
    if not config.uses_windows:
        return VisionLayout(None, None, positions, segment_layout(frame_sizes), segment_layout(frame_sizes))
    unit_order, window_sizes, base = [], [], 0
    for grid in grids:
        order, sizes = _window_order(grid, config)
        unit_order.append(order + base)
        window_sizes += [s * unit for s in sizes]
        base += order.size
    unit_order = np.concatenate(unit_order)
    token_order = (unit_order[:, None] * unit + np.arange(unit)).ravel().astype(np.int32)
    identity = np.array_equal(unit_order, np.arange(unit_order.size))
    return VisionLayout(
        token_order=None if identity else token_order,
        unit_restore=None if identity else np.argsort(unit_order).astype(np.int32),
        patch_positions=positions[token_order],
        window=segment_layout(window_sizes),
        full=segment_layout(frame_sizes),
    )
