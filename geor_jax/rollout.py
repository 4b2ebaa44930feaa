"""The two types every stage passes along: ``Prompts`` (image prompts) and ``Rollout`` (their completions).

The pipeline makes ``Prompts`` (``Batch.prompts()``), the sampler turns them
into a ``Rollout`` (``sampling.sample_groups``), the reward adds
``advantages`` and the reference model ``ref_logprobs``
(``Rollout.replace``), and the GRPO step consumes it. Rows are group-major:
completion ``b * G + g`` is sample g of prompt b. Both are pytrees
(``flax.struct``), so they pass through ``jax.jit`` as they are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

Grid = tuple[int, int, int]


@struct.dataclass
class Prompts:
    """B image prompts. tokens/mask: (B, P) left-padded; pixel_values: the patches of the
    images in order (None for text-only); grids: one static (t, h, w) per image.

    Native-resolution batches hold one image per row instead: pixel_values
    (B, L, patch_dim) patch slots, ``row_grids`` (B, 3) int32 (data, not
    static, so any mix of grids that fits the slots shares one compile) and
    no ``grids`` (``qwen2_5_vl.image_rows``)."""

    tokens: jax.Array
    mask: jax.Array
    pixel_values: jax.Array | None
    grids: tuple[Grid, ...] = struct.field(pytree_node=False)
    row_grids: jax.Array | None = None

    @property
    def image_grid_thw(self):
        """What the model's ``image_grid_thw`` takes: the static grids, or the per-row grid array."""
        return self.grids if self.row_grids is None else self.row_grids

    def matches_grids(self) -> bool:
        """Whether the patch rows equal the grids' patch count, or there is one patch slot per row (static)."""
        if self.row_grids is not None:
            rows = self.tokens.shape[0]
            return (not self.grids and self.pixel_values is not None and self.pixel_values.ndim == 3
                    and self.pixel_values.shape[0] == rows and self.row_grids.shape == (rows, 3))
        if self.pixel_values is None:
            return not self.grids
        return self.pixel_values.shape[0] == sum(t * h * w for t, h, w in self.grids)

    def repeat(self, group_size: int) -> Prompts:
        """Each prompt (and its image) repeated ``group_size`` times, group-major."""
        if group_size == 1:
            return self
        if self.row_grids is not None:
            return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), self)
        pixel_values = None
        if self.pixel_values is not None:
            per_image = [t * h * w for t, h, w in self.grids]
            starts = [sum(per_image[:i]) for i in range(len(per_image))]
            pixel_values = jnp.concatenate([
                self.pixel_values[start:start + size]
                for start, size in zip(starts, per_image)
                for _ in range(group_size)
            ])
        return Prompts(
            tokens=jnp.repeat(self.tokens, group_size, axis=0),
            mask=jnp.repeat(self.mask, group_size, axis=0),
            pixel_values=pixel_values,
            grids=tuple(grid for grid in self.grids for _ in range(group_size)),
        )

    def split(self, num_micro_batches: int) -> Prompts:
        """Arrays reshaped to (num_micro_batches, B / num_micro_batches, ...), for ``lax.scan``.

        Static grids must be the same in every micro-batch (true for bucketed
        pipeline batches, which share one resolution); per-row grids
        (``row_grids``) split with their rows.
        """
        batch = self.tokens.shape[0]
        if batch % num_micro_batches:
            raise ValueError(f"{batch} prompts do not split into {num_micro_batches} micro-batches")
        split = lambda x: x.reshape(num_micro_batches, x.shape[0] // num_micro_batches, *x.shape[1:])  # noqa: E731
        if self.row_grids is not None:
            return jax.tree.map(split, self)
        images_per_micro = len(self.grids) // num_micro_batches
        micro_grids = self.grids[:images_per_micro]
        if len(self.grids) % num_micro_batches or micro_grids * num_micro_batches != self.grids:
            raise ValueError(f"image grids {self.grids} differ between the {num_micro_batches} micro-batches")
        return Prompts(tokens=split(self.tokens), mask=split(self.mask),
                       pixel_values=None if self.pixel_values is None else split(self.pixel_values),
                       grids=micro_grids)


@struct.dataclass
class Rollout:
    """G completions for each of B prompts; every per-row array has B * G group-major rows, T columns.

    tokens: (B*G, T) int32, the sampler's ``pad_id`` after a row's end.
    mask: (B*G, T) int32, 1 on generated tokens (the stop token included).
    logprobs: (B*G, T) float32, the sampling policy's ``log_softmax(logits /
      temperature)`` at each token (0 where ``mask`` is 0): GRPO's old log-probs.
    advantages: (B*G,) float32, set once the completions are scored.
    ref_logprobs: (B*G, T) float32, the KL reference's log-probs (GRPO with beta > 0).
    """

    prompts: Prompts
    tokens: jax.Array
    mask: jax.Array
    logprobs: jax.Array
    advantages: jax.Array | None = None
    ref_logprobs: jax.Array | None = None

    @property
    def lengths(self) -> jax.Array:
        """(B*G,) int32: generated tokens per row."""
        return jnp.sum(self.mask, axis=1, dtype=jnp.int32)
