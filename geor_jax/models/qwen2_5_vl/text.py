"""Qwen2 text decoder (GQA with qkv bias, RMSNorm, SwiGLU, 3-D RoPE) in Flax NNX.

Layers are either a Python list (``scan_layers=False``) or one module whose
parameters are stacked along a leading ``layers`` axis and run with
``jax.lax.scan`` (``scan_layers=True``: compile time independent of depth).
Either way each layer can be rematerialised (``remat=True``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from geor_jax import sharding
from geor_jax.models.qwen2_5_vl import adapters, layers
from geor_jax.models.qwen2_5_vl.cache import KVCache, init_cache
from geor_jax.models.qwen2_5_vl.config import TextConfig
from geor_jax.models.qwen2_5_vl.rope import text_rope


class TextAttention(nnx.Module):
    """Grouped-query self-attention; optionally reads and writes one layer of a KV cache."""

    def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs):
        d, h, kv, hd = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.q_proj = layers.Dense((d,), (h, hd), ("embed",), ("heads", "head_dim"), use_bias=True, **kw)
        self.k_proj = layers.Dense((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kw)
        self.v_proj = layers.Dense((d,), (kv, hd), ("embed",), ("kv_heads", "head_dim"), use_bias=True, **kw)
        self.o_proj = layers.Dense((h, hd), (d,), ("heads", "head_dim"), ("embed",), use_bias=False, **kw)

    def __call__(self, x, cos, sin, mask, layer_cache, write_index):
        """x: (batch, seq, hidden). Without a cache, attends over ``x`` itself.

        With ``layer_cache`` = (keys, values), this layer's cache buffers (see
        ``cache.py`` for the layout): writes this call's keys and values at
        slot ``write_index`` and attends over the cache. Returns (output,
        updated layer cache or None).
        """
        q = layers.apply_rotary(self.q_proj(x), cos, sin)
        k = layers.apply_rotary(self.k_proj(x), cos, sin)
        v = self.v_proj(x)
        if layer_cache is None:
            return self.o_proj(layers.dot_product_attention(q, k, v, mask)), None
        cache_k, cache_v = layer_cache
        # Only this call's tokens are moved into the cache's layout.
        cache_k = jax.lax.dynamic_update_slice(
            cache_k, k.transpose(0, 2, 3, 1).astype(cache_k.dtype), (0, 0, 0, write_index))
        cache_v = jax.lax.dynamic_update_slice(
            cache_v, v.transpose(0, 2, 1, 3).astype(cache_v.dtype), (0, 0, write_index, 0))
        out = layers.head_major_attention(q, cache_k.astype(q.dtype), cache_v.astype(q.dtype), mask)
        return self.o_proj(out), (cache_k, cache_v)


class DecoderLayer(nnx.Module):
    """Pre-norm decoder block: attention then SwiGLU, each with a residual."""

    def __init__(self, config: TextConfig, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.input_layernorm = layers.RMSNorm(config.hidden_size, "embed", eps=config.rms_norm_eps, **kw)
        self.self_attn = TextAttention(config, **kw)
        self.post_attention_layernorm = layers.RMSNorm(config.hidden_size, "embed", eps=config.rms_norm_eps, **kw)
        self.mlp = layers.GatedMLP(
            config.hidden_size, config.intermediate_size, "embed", "mlp", act=config.hidden_act, use_bias=False, **kw
        )

    def __call__(self, x, cos, sin, mask, layer_cache, write_index):
        attn, layer_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, layer_cache, write_index)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), layer_cache


def _prepend_layer_axis(module: nnx.Module) -> None:
    """Tag the stacked parameters of a scanned module with the leading ``layers`` axis."""
    for _, var in nnx.iter_graph(module):
        if isinstance(var, nnx.Param):
            var.set_metadata(layers.LOGICAL_AXES, ("layers",) + tuple(var.get_metadata(layers.LOGICAL_AXES)))


def attention_mask_for(attention_mask: jax.Array, cache: KVCache | None) -> tuple[jax.Array, jax.Array | None]:
    """Boolean (batch, q_len, k_len) mask: causal in slot order and only real tokens as keys.
    With a cache, also returns the cache's updated ``valid`` slots."""
    valid_new = attention_mask.astype(bool)
    q_len = valid_new.shape[1]
    if cache is None:
        causal = jnp.tril(jnp.ones((q_len, q_len), bool))
        return causal[None] & valid_new[:, None, :], None
    valid = jax.lax.dynamic_update_slice(cache.valid, valid_new, (0, cache.length))
    q_slots = cache.length + jnp.arange(q_len)
    causal = jnp.arange(cache.max_len)[None, :] <= q_slots[:, None]
    return causal[None] & valid[:, None, :], valid


class TextDecoder(nnx.Module):
    """Token embedding, decoder layers and final norm (no LM head)."""

    def __init__(self, config: TextConfig, *, dtype=jnp.float32, param_dtype=jnp.float32, remat=False, scan_layers=False, rngs: nnx.Rngs):
        self.config = config
        self.dtype = dtype
        self.remat = remat
        self.scan_layers = scan_layers
        self.embed_tokens = layers.make_param(
            rngs, layers.normal_init, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype
        )
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        if scan_layers:
            @nnx.split_rngs(splits=config.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def make_stack(rngs):
                return DecoderLayer(config, rngs=rngs, **kw)

            self.layers = make_stack(rngs)
            _prepend_layer_axis(self.layers)
        else:
            self.layers = nnx.List([DecoderLayer(config, rngs=rngs, **kw) for _ in range(config.num_layers)])
        self.norm = layers.RMSNorm(config.hidden_size, "embed", eps=config.rms_norm_eps, rngs=rngs, **kw)

    def init_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache in this decoder's compute dtype and layer layout (stacked iff scanned)."""
        return init_cache(self.config, batch, max_len, self.dtype, stacked=self.scan_layers)

    def embed(self, input_ids: jax.Array) -> jax.Array:
        """(batch, seq) ids -> (batch, seq, hidden) embeddings in the compute dtype."""
        return jnp.take(self.embed_tokens[...], input_ids, axis=0).astype(self.dtype)

    def __call__(self, embeds, positions, attention_mask, cache: KVCache | None = None):
        """Run the decoder on input embeddings.

        embeds: (batch, seq, hidden); positions: (3, batch, seq) rotary
        positions; attention_mask: (batch, seq) 1 for real tokens. Returns
        (final hidden states, updated cache or None). The cache's
        ``next_position`` is left to the caller.
        """
        if cache is not None and cache.stacked != self.scan_layers:
            raise ValueError(f"a {'stacked' if cache.stacked else 'per-layer'} KV cache does not fit a decoder with "
                             f"scan_layers={self.scan_layers}: build it with the model's init_cache")
        cos, sin = text_rope(positions, self.config)
        mask, valid = attention_mask_for(attention_mask, cache)
        write_index = None if cache is None else cache.length

        def run_layer(layer, x, layer_cache):
            return layer(x, cos, sin, mask, layer_cache, write_index)

        if self.remat:
            run_layer = nnx.remat(run_layer)
        # The residual stream is split over rows (batch), not over the FSDP-sharded width the
        # embedding table would hand on (see ``sharding.constrain``); the scan keeps it so.
        x = sharding.constrain(embeds.astype(self.dtype), ("batch", None, None))
        if self.scan_layers:
            # Each layer's cache slice is a scan input and its update a scan output (not the whole
            # stacked cache as the carry, whose backward would save every layer's cache at every layer).
            graphdef, stacked = nnx.split(self.layers)

            def body(x, per_layer):
                layer_state, layer_kv, index = per_layer
                with adapters.layer_index(index):  # distinct LoRA dropout masks per layer
                    return run_layer(nnx.merge(graphdef, layer_state), x, layer_kv)

            kv = None if cache is None else (cache.keys, cache.values)
            x, kv = jax.lax.scan(body, x, (stacked, kv, jnp.arange(self.config.num_layers)))
        else:
            new_keys, new_values = [], []
            for index, layer in enumerate(self.layers):
                layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
                x, layer_cache = run_layer(layer, x, layer_cache)
                if cache is not None:
                    new_keys.append(layer_cache[0])
                    new_values.append(layer_cache[1])
            kv = (tuple(new_keys), tuple(new_values))
        x = self.norm(x)
        if cache is None:
            return x, None
        seq = embeds.shape[1]
        return x, cache.replace(keys=kv[0], values=kv[1], valid=valid, length=cache.length + seq)
