"""Key/value cache for incremental decoding, as a plain pytree.

All rows of a batch advance in lockstep: slot ``i`` of every row is written
by the same call, so one scalar ``length`` says where the next tokens go.
Padding (left-padded prompts, finished rows) is tracked per slot in
``valid``; rotary positions are tracked per row in ``next_position`` because
images make them differ from slot indices.

Layout, chosen so a decode step's attention reads the cache with no copy:

- keys are stored transposed, (batch, kv_heads, head_dim, max_len), and
  values as (batch, kv_heads, max_len, head_dim): both score matmuls are then
  plain (non-transposing) batched matmuls over (batch, kv_heads);
- a model with unrolled layers keeps one buffer per layer (tuples of
  ``num_layers`` arrays), each updated in place by its layer; slicing one
  layer out of a stacked buffer costs XLA CPU a copy of that layer's cache
  at every step. A model with scanned layers (``scan_layers=True``) keeps one
  stacked array with a leading ``layers`` axis, which ``lax.scan`` takes as
  per-layer inputs and returns as per-layer outputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from geor_jax.models.qwen2_5_vl.config import TextConfig

Layers = tuple[jax.Array, ...] | jax.Array

# Logical axis names of one layer's keys and values (stacked caches prepend "layers").
KEY_AXES = ("batch", "kv_heads", "head_dim", None)
VALUE_AXES = ("batch", "kv_heads", None, "head_dim")


@struct.dataclass
class KVCache:
    """keys: per layer (batch, kv_heads, head_dim, max_len); values: per layer
    (batch, kv_heads, max_len, head_dim) (tuples of per-layer arrays, or arrays
    with a leading layers axis when stacked); valid: (batch, max_len) bool, slot
    holds a real token; length: () int32 slots written; next_position: (batch,)
    int32 rotary position of the next token of each row."""

    keys: Layers
    values: Layers
    valid: jax.Array
    length: jax.Array
    next_position: jax.Array

    @property
    def max_len(self) -> int:
        return self.valid.shape[1]

    @property
    def stacked(self) -> bool:
        """Whether keys/values are single arrays with a leading layers axis."""
        return not isinstance(self.keys, tuple)


def init_cache(config: TextConfig, batch: int, max_len: int, dtype=jnp.float32, *, stacked: bool = False) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens (prompt + generated).

    ``stacked`` must match the model: True for ``scan_layers=True`` (use
    ``Qwen2VL.init_cache``, which picks it).
    """
    kv, hd, n = config.num_kv_heads, config.head_dim, config.num_layers
    key_shape, value_shape = (batch, kv, hd, max_len), (batch, kv, max_len, hd)
    if stacked:
        keys, values = jnp.zeros((n,) + key_shape, dtype), jnp.zeros((n,) + value_shape, dtype)
    else:
        keys = tuple(jnp.zeros(key_shape, dtype) for _ in range(n))
        values = tuple(jnp.zeros(value_shape, dtype) for _ in range(n))
    return KVCache(
        keys=keys,
        values=values,
        valid=jnp.zeros((batch, max_len), bool),
        length=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def repeat_rows(cache: KVCache, repeats: int) -> KVCache:
    """Repeat every row ``repeats`` times (row b -> rows b*repeats ... b*repeats+repeats-1),
    e.g. to decode a group of samples from one prefilled prompt."""
    row_axis = 1 if cache.stacked else 0
    repeat = lambda x: jnp.repeat(x, repeats, axis=row_axis)  # noqa: E731
    return KVCache(
        keys=jax.tree.map(repeat, cache.keys),
        values=jax.tree.map(repeat, cache.values),
        valid=jnp.repeat(cache.valid, repeats, axis=0),
        length=cache.length,
        next_position=jnp.repeat(cache.next_position, repeats, axis=0),
    )
