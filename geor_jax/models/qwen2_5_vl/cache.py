"""Key/value cache for incremental decoding, as a plain pytree.

All rows of a batch advance in lockstep: slot ``i`` of every row is written
by the same call, so one scalar ``length`` says where the next tokens go.
Padding (left-padded prompts, finished rows) is tracked per slot in
``valid``; rotary positions are tracked per row in ``next_position`` because
images make them differ from slot indices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from geor_jax.models.qwen2_5_vl.config import TextConfig


@struct.dataclass
class KVCache:
    """keys/values: (layers, batch, max_len, kv_heads, head_dim); valid: (batch, max_len)
    bool, slot holds a real token; length: () int32 slots written; next_position:
    (batch,) int32 rotary position of the next token of each row."""

    keys: jax.Array
    values: jax.Array
    valid: jax.Array
    length: jax.Array
    next_position: jax.Array

    @property
    def max_len(self) -> int:
        return self.keys.shape[2]


def init_cache(config: TextConfig, batch: int, max_len: int, dtype=jnp.float32) -> KVCache:
    """An empty cache for ``batch`` rows of up to ``max_len`` tokens (prompt + generated)."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    return KVCache(
        keys=jnp.zeros(shape, dtype),
        values=jnp.zeros(shape, dtype),
        valid=jnp.zeros((batch, max_len), bool),
        length=jnp.zeros((), jnp.int32),
        next_position=jnp.zeros((batch,), jnp.int32),
    )


def repeat_rows(cache: KVCache, repeats: int) -> KVCache:
    """Repeat every row ``repeats`` times (row b -> rows b*repeats ... b*repeats+repeats-1),
    e.g. to decode a group of samples from one prefilled prompt."""
    return KVCache(
        keys=jnp.repeat(cache.keys, repeats, axis=1),
        values=jnp.repeat(cache.values, repeats, axis=1),
        valid=jnp.repeat(cache.valid, repeats, axis=0),
        length=cache.length,
        next_position=jnp.repeat(cache.next_position, repeats, axis=0),
    )
