"""Shared pieces of the side-by-side benchmarks: the DESIGN.md bench config, timing, hardware peaks.

Call ``thread_flags`` before JAX starts its backend (the first computation or
device query; importing JAX does not start it). torch (an extra) and
transformers are imported only by the functions that need them, so a JAX-only
benchmark process never loads them.
"""

from __future__ import annotations

import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

# Special-token ids of the model / sampling benchmarks (random token ids, no tokenizer).
IMAGE_TOKEN, VIDEO_TOKEN, VISION_START, VISION_END = 8190, 8191, 8188, 8189
GRID = (1, 16, 16)  # one 224x224 image -> 256 patches -> 64 merged tokens

# DESIGN.md "The bench config": a ~36M-parameter random Qwen2.5-VL.
BENCH_TEXT = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                          "mrope_section": [8, 12, 12]})
BENCH_VISION = dict(depth=4, hidden_size=256, num_heads=4, intermediate_size=704, out_hidden_size=512, patch_size=14,
                    temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[3])
BENCH_TOKEN_IDS = dict(image_token_id=IMAGE_TOKEN, video_token_id=VIDEO_TOKEN, vision_start_token_id=VISION_START,
                       vision_end_token_id=VISION_END)


def thread_flags(threads: int) -> None:
    """Run on CPU (unless ``JAX_PLATFORMS`` says otherwise) with ``threads`` threads; call before JAX starts a backend."""
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={threads}").strip()
    if "JAX_PLATFORMS" not in os.environ:  # JAX read the variable when imported: set its config instead
        jax.config.update("jax_platforms", "cpu")


def bench_hf_model(token_ids: dict | None = None, bos_token_id: int = 1, eos_token_id: int = 2, seed: int = 0):
    """The bench config as a random transformers ``Qwen2_5_VLForConditionalGeneration`` (eval mode).

    ``token_ids`` overrides the image / video / vision start / end ids (e.g. a
    tokenizer's ``SpecialTokenIds.model_config_overrides()``).
    """
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(BENCH_TOKEN_IDS, **(token_ids or {}))
    text = dict(BENCH_TEXT, bos_token_id=bos_token_id, eos_token_id=eos_token_id)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=dict(BENCH_VISION), **ids)
    torch.manual_seed(seed)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def median_time(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls, and all the times."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def matmul_peak(n: int = 2048, dtype=jnp.float32) -> float:
    """Measured FLOP/s of a large jitted square matmul in ``dtype`` (median of 5)."""
    a = jnp.asarray(np.random.RandomState(0).randn(n, n), dtype)
    dot = jax.jit(jnp.dot)
    seconds, _ = median_time(lambda: dot(a, a).block_until_ready(), 5, 2)
    return matmul_flops(n, n, n) / seconds


def copy_bandwidth(megabytes: int = 256) -> float:
    """Measured bytes/s moved (read + write) by a jitted in-place elementwise pass over a large array
    (donated, so no fresh pages are touched)."""
    scale = jax.jit(lambda x: x * 1.0001, donate_argnums=0)
    buffers = [jnp.ones((megabytes * 2**20 // 4,), jnp.float32)]

    def run():
        buffers[0] = scale(buffers[0]).block_until_ready()

    seconds, _ = median_time(run, 5)
    return 2 * buffers[0].nbytes / seconds


def matmul_flops(m: int, n: int, k: int) -> int:
    """FLOPs of an (m, k) x (k, n) matmul (multiply + add)."""
    return 2 * m * n * k


def decoder_forward_flops(hidden: int, intermediate: int, heads: int, kv_heads: int, layers: int, vocab: int,
                          tokens: int, context: int, logit_tokens: int | None = None) -> int:
    """Matmul FLOPs of a Qwen2-style decoder forward over ``tokens`` tokens that each attend to ``context``
    keys (on average), plus the LM head on ``logit_tokens`` (default: all) tokens. Elementwise work is
    not counted (it is a few percent)."""
    head_dim = hidden // heads
    projections = matmul_flops(tokens, (heads + 2 * kv_heads) * head_dim, hidden) + matmul_flops(tokens, hidden, hidden)
    attention = 2 * matmul_flops(tokens, context, head_dim) * heads
    mlp = 3 * matmul_flops(tokens, intermediate, hidden)
    head = matmul_flops(tokens if logit_tokens is None else logit_tokens, vocab, hidden)
    return layers * (projections + attention + mlp) + head


def compiled_flops(jitted, *args, **kwargs) -> float:
    """XLA's FLOP count (cost analysis) of ``jitted`` compiled for these arguments."""
    return float(jitted.lower(*args, **kwargs).compile().cost_analysis()["flops"])


def streamed_param_bytes(model) -> int:
    """Bytes of the parameters a decode step reads: decoder layers, final norm, LM head (not the
    vision tower, and of the embedding table only the rows looked up)."""
    total = sum(x.nbytes for x in jax.tree.leaves(nnx.state(model.text))) - model.text.embed_tokens[...].nbytes
    head = model.text.embed_tokens[...] if model.lm_head is None else model.lm_head.kernel[...]
    return total + head.nbytes


def decode_weight_shapes(text) -> list[tuple[int, int]]:
    """(fan_in, fan_out) of every weight matmul of one decode step, in order: per layer q, k, v, o,
    gate, up, down, then the LM head (``text``: a ``TextConfig``)."""
    d, q, kv, mlp = text.hidden_size, text.num_heads * text.head_dim, text.num_kv_heads * text.head_dim, text.intermediate_size
    layer = [(d, q), (d, kv), (d, kv), (q, d), (d, mlp), (d, mlp), (mlp, d)]
    return layer * text.num_layers + [(d, text.vocab_size)]


def weight_matmul_time(text, rows: int, dtype, repeats: int, steps: int = 8) -> float:
    """Seconds per step of a decode step's weight matmuls alone: ``rows`` x (fan_in, fan_out) dots over
    fresh ``dtype`` weights of the step's shapes, chained in the step's order (float32 results), in a
    jitted loop. Every weight is read once per step, as in decoding, so with weights larger than the
    last-level cache this is what streaming them through XLA's matmul costs: the floor a decode
    step of this model and batch cannot beat with the same matmul kernels."""
    rng = np.random.RandomState(0)
    weights = [jnp.asarray(rng.randn(k, n).astype(np.float32) / np.sqrt(k), dtype) for k, n in decode_weight_shapes(text)]
    width = max(max(w.shape) for w in weights)

    @jax.jit
    def run(weights):
        def step(_, h):
            for w in weights:
                k, n = w.shape
                h = h.at[:, :n].add(jnp.dot(h[:, :k].astype(w.dtype), w, preferred_element_type=jnp.float32))
            return h

        return jax.lax.fori_loop(0, steps, step, jnp.ones((rows, width), jnp.float32))

    return median_time(lambda: jax.block_until_ready(run(weights)), repeats)[0] / steps


def decode_step_cost(model, rows: int, prompt_len: int, new_tokens: int) -> tuple[float, float]:
    """(FLOPs, bytes read) of one decode step of ``rows`` rows: XLA's FLOP count over a full
    cache of prompt + new slots; bytes = ``streamed_param_bytes`` + the K/V slots that hold
    tokens, averaged over the decode steps."""
    graphdef, state = nnx.split(model)

    def step(state, cache, token):
        m = nnx.merge(graphdef, state)
        hidden, cache = m.hidden_states(token, jnp.ones_like(token), positions=jnp.zeros((3, rows, 1), jnp.int32),
                                        cache=cache)
        return m.logits(hidden), cache

    cache = jax.eval_shape(lambda: model.init_cache(rows, prompt_len + new_tokens))
    token = jax.ShapeDtypeStruct((rows, 1), jnp.int32)
    flops = compiled_flops(jax.jit(step), state, cache, token)
    text = model.config.text
    slot_bytes = 2 * text.num_layers * text.num_kv_heads * text.head_dim * jnp.dtype(model.text.dtype).itemsize
    kv_bytes = rows * (prompt_len + (new_tokens - 1) / 2) * slot_bytes
    return flops, float(streamed_param_bytes(model) + kv_bytes)


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss_bytes() -> int:
    """This process's resident set size now (Linux ``/proc/self/status``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def load_average() -> str:
    """The 1 / 5 / 15 minute load averages, for the results' load note."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def compile_listener(compiles: list, function_name: str):
    """Register a ``jax.monitoring`` listener that appends the seconds of every XLA compilation of
    ``jit(function_name)`` to ``compiles``; returns it (``jax.monitoring.unregister_event_duration_listener``)."""

    def listener(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration" and kwargs.get("fun_name") == f"jit({function_name})":
            compiles.append(duration_secs)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return listener
