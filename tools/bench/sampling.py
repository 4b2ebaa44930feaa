"""Rollout throughput: ``geor_jax.sampling`` vs transformers ``generate`` on CPU.

DESIGN.md bench config (random Qwen2.5-VL, ~36M parameters; fp32, or bf16 on
both sides with ``--dtype=bfloat16``, optionally with geor_jax computing in
fp32 on the bf16 weights, ``--jax_compute_dtype=float32``): B prompts of one 224x224 image (64
image tokens) and ~40 text tokens, G samples each, 64 new tokens at
temperature 0.9 (no top-k / top-p, no early stop on either side), both sides
limited to ``--threads`` threads, same weights. Prints, per G, the median time
of a whole call (prefill + decode) and generated tokens/s of both, their
ratio, and the time of one decode step against this machine's hardware bound:
max(step FLOPs / measured matmul peak, bytes read per step / measured copy
bandwidth), bytes = decoder + LM-head parameters + the KV cache slots a step
must read, and against the step's weight matmuls alone (same shapes and rows,
each weight streamed once: the floor with XLA's matmul kernels).

    PYTHONPATH=. python tools/bench/sampling.py
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402
from common import GRID, IMAGE_TOKEN, VISION_END, VISION_START, copy_bandwidth, matmul_peak, median_time  # noqa: E402
from geor_jax import sampling  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.models.qwen2_5_vl import layers  # noqa: E402
from geor_jax.rollout import Prompts  # noqa: E402
from geor_jax.run import cli  # noqa: E402

_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads of both sides.", lower_bound=1)
_PROMPTS = flags.DEFINE_integer("prompts", 2, "Prompts per call (B).", lower_bound=1)
_GROUPS = flags.DEFINE_list("groups", ["4", "8", "16"], "Samples per prompt (G), comma-separated.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens sampled per row.", lower_bound=2)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed geor_jax calls (median reported).", lower_bound=1)
_TORCH_REPEATS = flags.DEFINE_integer("torch_repeats", 3, "Timed transformers calls (median reported).", lower_bound=1)
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", False, "geor_jax: one scanned block instead of unrolled layers.")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Time geor_jax only (the weights still come from transformers).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Parameter and compute dtype of both sides (the peak is measured in it too).")
_JAX_COMPUTE_DTYPE = flags.DEFINE_enum("jax_compute_dtype", None, ["float32", "bfloat16"],
                                       "geor_jax's compute dtype if not --dtype (e.g. bfloat16 weights, float32 "
                                       "activations).")
flags.register_validator("groups", lambda groups: all(g.isdigit() and int(g) >= 1 for g in groups),
                         "comma-separated positive integers")

TEMPERATURE = 0.9


def bench_prompts(prompts: int, patch_dim: int):
    """Left-padded chat-like prompts: ~20 text tokens, the image block, ~20 text tokens (lengths differ by 4)."""
    rng = np.random.RandomState(0)
    image = [VISION_START] + [IMAGE_TOKEN] * (GRID[1] * GRID[2] // 4) + [VISION_END]
    rows = [list(rng.randint(3, 8000, 20)) + image + list(rng.randint(3, 8000, 20 - 4 * (b % 2))) for b in range(prompts)]
    width = max(map(len, rows))
    ids = np.zeros((prompts, width), np.int32)
    mask = np.zeros((prompts, width), np.int32)
    for b, row in enumerate(rows):
        ids[b, width - len(row):], mask[b, width - len(row):] = row, 1
    pixels = rng.randn(prompts * GRID[0] * GRID[1] * GRID[2], patch_dim).astype(np.float32)
    return ids, mask, pixels, (GRID,) * prompts


def loop_step_time(model, rows: int, slots: int, repeats: int, steps: int = 16) -> float:
    """Seconds per decode step of a jitted loop over a cache of ``slots`` filled slots per row.

    Comparing slots = prompt + new tokens (every sample holds its prompt copy)
    with slots = new tokens (what each sample would hold if the prompt's keys
    were shared) bounds what a shared-prefix attention could save.
    """
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        cache = m.init_cache(rows, slots)
        cache = cache.replace(valid=jnp.ones_like(cache.valid), length=jnp.asarray(slots - steps, jnp.int32))
        ones, zeros = jnp.ones((rows, 1), jnp.int32), jnp.zeros((3, rows, 1), jnp.int32)

        def body(_, carry):
            cache, token = carry
            hidden, cache = m.hidden_states(token, ones, positions=zeros, cache=cache)
            return cache, jnp.argmax(m.logits(hidden), axis=-1).astype(jnp.int32)

        return jax.lax.fori_loop(0, steps, body, (cache, ones))[1]

    return median_time(lambda: jax.block_until_ready(run(state)), repeats)[0] / steps


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(_THREADS.value)
    torch.set_num_threads(_THREADS.value)
    hf = common.bench_hf_model()
    dtype = jnp.dtype(_DTYPE.value)
    n_params = sum(p.numel() for p in hf.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = qvl.load_hf_checkpoint(tmp, scan_layers=_SCAN_LAYERS.value, param_dtype=dtype,
                                       dtype=jnp.dtype(_JAX_COMPUTE_DTYPE.value or _DTYPE.value))
    hf = hf.to(getattr(torch, _DTYPE.value))
    ids, mask, pixels, grids = bench_prompts(_PROMPTS.value, model.config.vision.patch_dim)
    prompt_len, new = ids.shape[1], _NEW_TOKENS.value
    peak, bandwidth = matmul_peak(dtype=dtype), copy_bandwidth()
    param_bytes = common.streamed_param_bytes(model)
    print(f"params {n_params / 1e6:.1f}M (decode streams {param_bytes / 1e6:.0f} MB)  prompts {_PROMPTS.value} x {prompt_len} "
          f"tokens (padded)  new tokens {new}  threads {_THREADS.value}  scan_layers {_SCAN_LAYERS.value}  dtype {_DTYPE.value}"
          f"  jax compute dtype {jnp.dtype(model.text.dtype)}")
    print(f"{_DTYPE.value} matmul peak (2048^3 jnp.dot) {peak / 1e9:.1f} GFLOP/s; copy bandwidth (256 MB in-place x*c, read+write) "
          f"{bandwidth / 1e9:.1f} GB/s")
    config = sampling.SamplingConfig(max_new_tokens=new, temperature=TEMPERATURE)
    prompts = Prompts(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), grids)
    rows_header = ("G", "jax s/call", "jax tok/s", "hf s/call", "hf tok/s", "ratio", "prefill s", "step ms",
                   "bound ms", "step/bound", "bound tok/s", "matmuls ms", "step/matmuls")
    results = []
    for group in map(int, _GROUPS.value):
        rows = _PROMPTS.value * group
        key = jax.random.key(0)

        def call():
            return jax.block_until_ready(sampling.sample_groups(model, prompts, key, config, group_size=group))

        out = call()
        assert int(np.min(np.asarray(out.lengths))) == new
        jax_s, _ = median_time(call, _REPEATS.value)

        def prefill():  # the prefill phase of ``call``, its model split included
            graphdef, state = nnx.split(model)
            return jax.block_until_ready(sampling.prefill(graphdef, state, prompts, group_size=group,
                                                          max_len=prompt_len + new))

        prefill_s, _ = median_time(prefill, _REPEATS.value)
        step_s = (jax_s - prefill_s) / (new - 1)
        flops, step_bytes = common.decode_step_cost(model, rows, prompt_len, new)
        bound_s = max(flops / peak, step_bytes / bandwidth)
        full_slots_s = loop_step_time(model, rows, prompt_len + new, _REPEATS.value)
        completion_slots_s = loop_step_time(model, rows, new, _REPEATS.value)
        operand_dtype = layers.matmul_dtype(dtype, model.text.dtype)
        matmuls_s = common.weight_matmul_time(model.config.text, rows, operand_dtype, _REPEATS.value)
        hf_s = float("nan")
        if not _SKIP_TORCH.value:
            def hf_call():
                with torch.no_grad():
                    return hf.generate(
                        input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                        pixel_values=torch.tensor(pixels).to(hf.dtype), image_grid_thw=torch.tensor(grids),
                        mm_token_type_ids=torch.tensor((ids == IMAGE_TOKEN).astype(np.int64)),
                        do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, num_return_sequences=group,
                        max_new_tokens=new, min_new_tokens=new, pad_token_id=0)

            assert hf_call().shape == (rows, prompt_len + new)
            hf_s, _ = median_time(hf_call, _TORCH_REPEATS.value)
        generated = rows * new
        results.append((group, jax_s, generated / jax_s, hf_s, generated / hf_s, hf_s / jax_s, prefill_s, 1e3 * step_s,
                        1e3 * bound_s, step_s / bound_s, rows / bound_s, 1e3 * matmuls_s, step_s / matmuls_s))
        print(f"G={group}: step FLOPs {flops / 1e6:.0f} M ({1e3 * flops / peak:.2f} ms at peak), step bytes "
              f"{step_bytes / 1e6:.0f} MB ({1e3 * step_bytes / bandwidth:.2f} ms at bandwidth); model step over "
              f"{prompt_len + new} cache slots {1e3 * full_slots_s:.2f} ms vs {new} slots {1e3 * completion_slots_s:.2f} ms "
              f"(shared-prefix headroom); the step's weight matmuls alone {1e3 * matmuls_s:.2f} ms "
              f"({param_bytes / matmuls_s / 1e9:.1f} GB/s of weights)", flush=True)
    print("| " + " | ".join(rows_header) + " |")
    print("|" + " --- |" * len(rows_header))
    for r in results:
        print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.0f} | {r[3]:.3f} | {r[4]:.0f} | {r[5]:.2f}x | {r[6]:.3f} | {r[7]:.2f} | "
              f"{r[8]:.2f} | {r[9]:.2f} | {r[10]:.0f} | {r[11]:.2f} | {r[12]:.2f} |")


if __name__ == "__main__":
    cli.main(main)
