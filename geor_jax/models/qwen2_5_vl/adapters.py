"""LoRA adapters on ``layers.Dense``: ``y = x W + b + (alpha / r) * dropout(x) A B``.

An adapter is a Dense's ``lora`` attribute (``geor_jax.lora.add_adapters``
puts them there). A is (fan_in..., r) and B is (r, fan_out...), both
``nnx.LoRAParam`` with the kernel's logical axes on their kernel-side
dimensions, so they shard like the weight they adapt. B starts at zero: a
fresh adapter adds exactly zero and the model computes what it did without.

Dropout (PEFT's ``lora_dropout``, on the adapter's input) is active only
inside ``dropout_rng(key)``, which the SFT and GRPO steps open around their
forward; sampling, the KL reference and evaluation run without it. Each
adapter folds its own id into the key, and the scanned text decoder folds in
the layer index (``layer_index``), so no two adapters or layers share a mask.
"""

from __future__ import annotations

import contextlib
import math
import threading

import jax
import jax.numpy as jnp
from flax import nnx

from geor_jax.models.qwen2_5_vl.layers import matmul_dtype
from geor_jax.sharding import LOGICAL_AXES

RANK_AXIS = "lora_rank"

_dropout = threading.local()  # .key: the current dropout key (a traced value), or None


@contextlib.contextmanager
def dropout_rng(key: jax.Array):
    """Adapters with dropout > 0 drop inputs, drawn from ``key``, inside this context (training steps only)."""
    previous = getattr(_dropout, "key", None)
    _dropout.key = key
    try:
        yield
    finally:
        _dropout.key = previous


@contextlib.contextmanager
def layer_index(index: jax.Array):
    """Inside a scanned layer stack: fold the layer's index into the dropout key (a no-op without one)."""
    previous = getattr(_dropout, "key", None)
    _dropout.key = None if previous is None else jax.random.fold_in(previous, index)
    try:
        yield
    finally:
        _dropout.key = previous


class LoRA(nnx.Module):
    """A low-rank update of one Dense: ``scale * dropout(x) @ A @ B`` on flattened inputs (tokens, fan_in).

    ``a``/``b`` may carry a leading ``layers`` axis (a scanned stack); the
    scan hands each layer its slice. Matmuls take ``matmul_dtype`` operands
    like the Dense they sit on, so narrowing weights to the compute dtype
    (``sampling.narrow_text_weights``) leaves the numbers unchanged.
    """

    def __init__(self, a: jax.Array, b: jax.Array, a_axes, b_axes, *, scale: float, dropout: float,
                 dropout_id: int, dtype):
        self.lora_a = nnx.LoRAParam(a, **{LOGICAL_AXES: tuple(a_axes)})
        self.lora_b = nnx.LoRAParam(b, **{LOGICAL_AXES: tuple(b_axes)})
        self.scale = scale
        self.dropout = dropout
        self.dropout_id = dropout_id
        self.dtype = dtype

    @property
    def rank(self) -> int:
        return self.lora_a.shape[-1]

    def __call__(self, x: jax.Array) -> jax.Array:
        """(tokens, fan_in) -> (tokens, fan_out) in the compute dtype."""
        a, b = self.lora_a[...], self.lora_b[...]
        operand = matmul_dtype(a.dtype, self.dtype)
        key = getattr(_dropout, "key", None)
        if self.dropout and key is not None:
            keep = jax.random.bernoulli(jax.random.fold_in(key, self.dropout_id), 1.0 - self.dropout, x.shape)
            x = jnp.where(keep, x / (1.0 - self.dropout), 0.0).astype(x.dtype)
        h = jnp.dot(x.astype(operand), a.reshape(-1, self.rank).astype(operand), preferred_element_type=self.dtype)
        h = (h * self.scale).astype(operand)
        return jnp.dot(h, b.reshape(self.rank, -1).astype(operand), preferred_element_type=self.dtype)

    def delta(self) -> jax.Array:
        """``scale * A @ B`` in float32, shaped like the kernel (a leading layer axis kept): the merged update."""
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        stacked = self.lora_a.get_metadata(LOGICAL_AXES)[0] == "layers"
        lead = a.shape[:1] if stacked else ()
        in_shape, out_shape = a.shape[len(lead):-1], b.shape[len(lead) + 1:]
        a = a.reshape(lead + (math.prod(in_shape), self.rank))
        b = b.reshape(lead + (self.rank, math.prod(out_shape)))
        return (self.scale * jnp.matmul(a, b)).reshape(lead + in_shape + out_shape)
