"""Building blocks shared by the vision tower and the text decoder.

Every parameter is an ``nnx.Param`` carrying ``logical_axes`` metadata (one
name per dimension); ``geor_jax.sharding`` maps those names onto mesh axes.
Parameters are stored in ``param_dtype`` and cast to the compute ``dtype`` at
use, except that a matmul never widens a weight (``matmul_dtype``); norms and
softmax always run in float32.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from geor_jax.sharding import LOGICAL_AXES
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_param(rngs: nnx.Rngs, init: Callable, shape: Sequence[int], axes: Sequence[str | None], dtype, **metadata) -> nnx.Param:
    """A parameter initialised by ``init`` and tagged with logical axis names (plus any extra metadata)."""
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {axes} do not match shape {shape}")
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), **{LOGICAL_AXES: tuple(axes)}, **metadata)


normal_init = jax.nn.initializers.normal(0.02)
zeros_init = jax.nn.initializers.zeros
ones_init = jax.nn.initializers.ones


def matmul_dtype(param_dtype, compute_dtype):
    """The dtype a matmul's operands take: the narrower of the stored weights and the compute dtype.

    bfloat16 weights with float32 compute then multiply bfloat16 operands into
    float32 results (what TPUs do for float32 matmuls by default) instead of
    materialising a float32 copy of every weight at every use (decoding is
    bound by reading weights; see tools/bench/RESULTS.md).
    """
    return param_dtype if jnp.finfo(param_dtype).bits < jnp.finfo(compute_dtype).bits else compute_dtype


class Dense(nnx.Module):
    """``y = x @ kernel + bias`` with a kernel of any rank, plus its LoRA adapter's update if it has one.

    ``in_shape``/``out_shape`` let attention keep heads as their own dimension
    (e.g. kernel ``(embed, heads, head_dim)``), which is what tensor
    parallelism shards. ``lora`` is None or an ``adapters.LoRA``
    (``geor_jax.lora.add_adapters``); its update is added last, so a zero
    update leaves ``y`` exactly as it was.
    """

    def __init__(self, in_shape, out_shape, in_axes, out_axes, *, use_bias: bool, dtype, param_dtype, rngs):
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        self.n_in = len(in_shape)
        self.kernel = make_param(
            rngs, normal_init, in_shape + out_shape, tuple(in_axes) + tuple(out_axes), param_dtype, input_dims=self.n_in
        )
        self.bias = make_param(rngs, zeros_init, out_shape, out_axes, param_dtype) if use_bias else None
        self.lora = nnx.data(None)
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        """Contract the last ``n_in`` dimensions of ``x`` with the kernel, in ``matmul_dtype``.

        Computed as one 2-D matmul, (tokens, fan_in) @ (fan_in, fan_out), with
        reshapes around it: for XLA CPU that keeps the backward's weight
        gradient ``x^T @ dy`` a plain dot of row-major operands, where the
        equivalent rank-3 ``tensordot`` made XLA copy a transposed activation
        before each weight-gradient dot (about 10% of an MLP's fwd+bwd).
        """
        kernel = self.kernel[...]
        operand = matmul_dtype(kernel.dtype, self.dtype)
        kernel = kernel.astype(operand)
        in_shape, out_shape = kernel.shape[: self.n_in], kernel.shape[self.n_in :]
        lead = x.shape[: x.ndim - self.n_in]
        fan_in = math.prod(in_shape)
        y = jnp.dot(x.astype(operand).reshape(-1, fan_in), kernel.reshape(fan_in, -1),
                    preferred_element_type=self.dtype).reshape(lead + out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        if self.lora is not None:
            y = y + self.lora(x.reshape(-1, fan_in)).reshape(lead + out_shape)
        return y


class RMSNorm(nnx.Module):
    """Root-mean-square norm computed in float32, then scaled (as Qwen2 does)."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, dtype, param_dtype, rngs):
        self.scale = make_param(rngs, ones_init, (dim,), (axis_name,), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


class LayerNorm(nnx.Module):
    """Mean/variance layer norm with scale and bias, computed in float32 (Qwen2-VL vision)."""

    def __init__(self, dim: int, axis_name: str, *, eps: float, dtype, param_dtype, rngs):
        self.scale = make_param(rngs, ones_init, (dim,), (axis_name,), param_dtype)
        self.bias = make_param(rngs, zeros_init, (dim,), (axis_name,), param_dtype)
        self.eps = eps
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = jnp.mean(x32, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
        normed = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (normed * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation function a HF config names (``silu``, ``quick_gelu``, ``gelu``)."""
    if name == "silu":
        return jax.nn.silu
    if name == "quick_gelu":
        return lambda x: x * jax.nn.sigmoid(1.702 * x)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    raise ValueError(f"unsupported activation {name!r}")


class GatedMLP(nnx.Module):
    """SwiGLU feed-forward: ``down(act(gate(x)) * up(x))``."""

    def __init__(self, dim, hidden, embed_axis, mlp_axis, *, act: str, use_bias: bool, dtype, param_dtype, rngs):
        kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = Dense((dim,), (hidden,), (embed_axis,), (mlp_axis,), **kw)
        self.up_proj = Dense((dim,), (hidden,), (embed_axis,), (mlp_axis,), **kw)
        self.down_proj = Dense((hidden,), (dim,), (mlp_axis,), (embed_axis,), **kw)
        self.act = activation(act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class PlainMLP(nnx.Module):
    """Two-layer feed-forward ``fc2(act(fc1(x)))`` (Qwen2-VL vision blocks)."""

    def __init__(self, dim, hidden, embed_axis, mlp_axis, *, act: str, dtype, param_dtype, rngs):
        kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = Dense((dim,), (hidden,), (embed_axis,), (mlp_axis,), **kw)
        self.fc2 = Dense((hidden,), (dim,), (mlp_axis,), (embed_axis,), **kw)
        self.act = activation(act)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.act(self.fc1(x)))


def rotate_half(x: jax.Array) -> jax.Array:
    """``(x1, x2) -> (-x2, x1)`` over the last dimension (the rotary pairing Qwen uses)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate ``x`` (..., heads, head_dim) by angles given as cos/sin (..., head_dim), in float32."""
    x32 = x.astype(jnp.float32)
    cos, sin = cos[..., None, :], sin[..., None, :]
    return (x32 * cos + rotate_half(x32) * sin).astype(x.dtype)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Grouped-query attention on token-major inputs.

    q: (batch, q_len, heads, head_dim); k, v: (batch, k_len, kv_heads, head_dim);
    mask: boolean, broadcastable to (batch, q_len, k_len), True where a query
    may attend. Returns q's shape and dtype.

    Keys and values are moved to head-major layout once up front.
    """
    return _grouped_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask, "bhgqd,bhkd->bhgqk")


def head_major_attention(q: jax.Array, keys_t: jax.Array, values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Grouped-query attention over a KV cache's head-major layout.

    q: (batch, q_len, heads, head_dim); keys_t: (batch, kv_heads, head_dim,
    k_len) (transposed, so the score matmul needs no transpose); values:
    (batch, kv_heads, k_len, head_dim); mask as in ``dot_product_attention``.
    """
    return _grouped_attention(q, keys_t, values, mask, "bhgqd,bhdk->bhgqk")


def _grouped_attention(q, k, v, mask, score_spec: str) -> jax.Array:
    """Attention with head-major k / v (``score_spec`` says whether k is transposed).
    Scores and softmax are float32; returns q's shape and dtype.

    q is moved to (batch, kv_heads, group, q_len, head_dim) and the output
    back once, so both score matmuls are plain batched matmuls over (batch,
    kv_heads); with token-major operands XLA CPU inserted transposes of the
    score and probability tensors around every matmul of the backward pass,
    and of every layer's cache at every decode step.
    """
    batch, q_len, heads, head_dim = q.shape
    kv_heads = v.shape[1]
    groups = heads // kv_heads
    q = q.reshape(batch, q_len, kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum(score_spec, q, k, preferred_element_type=jnp.float32)
    scores = scores * (head_dim**-0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, None, :, :], scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhgqk,bhkd->bhgqd", probs, v, preferred_element_type=jnp.float32)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, q_len, heads, head_dim).astype(q.dtype)
