"""Forward+backward throughput of the NNX Qwen2.5-VL vs transformers (PyTorch) on CPU.

Same random weights (the NNX model is loaded from the transformers model's
saved checkpoint), same inputs, same loss (sum of next-token log-probs), both
limited to ``--threads`` threads. Prints tokens/s medians after warm-up, their
ratio, and achieved FLOP/s (XLA's count for the compiled step) against this
machine's fp32 matmul peak, measured here with a large ``jnp.dot``.

    python tools/bench/model_fwd_bwd.py            # DESIGN.md bench config
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--text_tokens", type=int, default=107, help="text tokens around the image block (64 pads + start/end)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--remat", action="store_true")
    parser.add_argument("--skip_torch", action="store_true")
    return parser.parse_args()


ARGS = parse_args()
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={ARGS.threads}"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402

IMAGE_TOKEN, VISION_START, VISION_END = 8190, 8188, 8189
GRID = (1, 16, 16)  # one 224x224 image -> 64 merged tokens


def bench_hf_model():
    """The DESIGN.md bench config: a ~36M-parameter random Qwen2.5-VL."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    text = dict(vocab_size=8192, hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=2, rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [8, 12, 12]},
                bos_token_id=1, eos_token_id=2)
    vision = dict(depth=4, hidden_size=256, num_heads=4, intermediate_size=704, out_hidden_size=512, patch_size=14,
                  temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[3])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=IMAGE_TOKEN, video_token_id=8191,
                              vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(config)


def bench_inputs(batch: int, text_tokens: int, patch_dim: int):
    rng = np.random.RandomState(0)
    image = [VISION_START] + [IMAGE_TOKEN] * (GRID[1] * GRID[2] // 4) + [VISION_END]
    before = 40
    rows = [list(rng.randint(3, 8000, before)) + image + list(rng.randint(3, 8000, text_tokens - before)) for _ in range(batch)]
    ids = np.asarray(rows, np.int64)
    pixels = rng.randn(batch * GRID[0] * GRID[1] * GRID[2], patch_dim).astype(np.float32)
    return ids, pixels, (GRID,) * batch


def timed(step, steps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def matmul_peak(n: int = 2048) -> float:
    """Measured fp32 FLOP/s of a large jnp matmul (median of 5)."""
    a = jnp.asarray(np.random.RandomState(0).randn(n, n).astype(np.float32))
    dot = jax.jit(jnp.dot)
    times = timed(lambda: dot(a, a).block_until_ready(), 5, 2)
    return 2 * n**3 / statistics.median(times)


def main():
    torch.set_num_threads(ARGS.threads)
    hf = bench_hf_model()
    n_params = sum(p.numel() for p in hf.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = qvl.load_hf_checkpoint(tmp, remat=ARGS.remat)
    ids, pixels, grids = bench_inputs(ARGS.batch, ARGS.text_tokens, model.config.vision.patch_dim)
    tokens = ids.size
    print(f"params {n_params / 1e6:.1f}M  batch {ids.shape[0]} x {ids.shape[1]} tokens  threads {ARGS.threads}")

    def loss_fn(model, ids, pixels):
        logits = model(ids, pixel_values=pixels, image_grid_thw=grids).logits
        return -jnp.mean(qvl.token_logprobs(logits[:, :-1], ids[:, 1:]))

    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, ids, pixels):
        return jax.value_and_grad(lambda s: loss_fn(nnx.merge(graphdef, s), ids, pixels))(state)

    jids, jpix = jnp.asarray(ids), jnp.asarray(pixels)
    compiled = step.lower(state, jids, jpix).compile()
    flops = compiled.cost_analysis()["flops"]
    jax_times = timed(lambda: jax.block_until_ready(compiled(state, jids, jpix)), ARGS.steps, ARGS.warmup)
    jax_median = statistics.median(jax_times)
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
    print(f"step FLOPs (XLA cost analysis, fwd+bwd): {flops / 1e9:.1f} GFLOP")
    print(f"jax/nnx      : median {jax_median:.2f} s/step  {tokens / jax_median:.0f} tokens/s  "
          f"{flops / jax_median / 1e9:.1f} GFLOP/s = {flops / jax_median / peak:.0%} of peak  (steps {[round(t, 2) for t in jax_times]})")
    if ARGS.skip_torch:
        return
    tids, tpix = torch.tensor(ids), torch.tensor(pixels)
    tgrid, mm = torch.tensor(grids), torch.tensor((ids == IMAGE_TOKEN).astype(np.int64))

    def torch_step():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=tids, pixel_values=tpix, image_grid_thw=tgrid, mm_token_type_ids=mm).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tids[:, 1:, None])
        (-logp.mean()).backward()

    hf.train()
    torch_times = timed(torch_step, ARGS.steps, ARGS.warmup)
    torch_median = statistics.median(torch_times)
    print(f"transformers : median {torch_median:.2f} s/step  {tokens / torch_median:.0f} tokens/s  "
          f"{flops / torch_median / 1e9:.1f} GFLOP/s = {flops / torch_median / peak:.0%} of peak  (steps {[round(t, 2) for t in torch_times]})")
    print(f"ratio jax/transformers tokens/s: {torch_median / jax_median:.2f}x")


if __name__ == "__main__":
    main()
