"""Forward+backward throughput of the NNX Qwen2.5-VL vs transformers (PyTorch) on CPU.

Same random weights (the NNX model is loaded from the transformers model's
saved checkpoint), same inputs, same loss (sum of next-token log-probs), both
limited to ``--threads`` threads. Prints tokens/s medians after warm-up, their
ratio, and achieved FLOP/s (XLA's count for the compiled step) against this
machine's fp32 matmul peak, measured here with a large ``jnp.dot``.

    python tools/bench/model_fwd_bwd.py            # DESIGN.md bench config
"""

from __future__ import annotations

import os
import statistics
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
from common import GRID, IMAGE_TOKEN, VISION_END, VISION_START  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.run import cli  # noqa: E402

_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads of both sides.", lower_bound=1)
_BATCH = flags.DEFINE_integer("batch", 16, "Sequences per step.", lower_bound=1)
_TEXT_TOKENS = flags.DEFINE_integer("text_tokens", 107, "text tokens around the image block (64 pads + start/end)",
                                    lower_bound=40)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (median reported).", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps first.", lower_bound=0)
_REMAT = flags.DEFINE_bool("remat", False, "geor_jax: rematerialise the blocks.")
_SKIP_TORCH = flags.DEFINE_bool("skip_torch", False, "Time geor_jax only (the weights still come from transformers).")


def bench_inputs(batch: int, text_tokens: int, patch_dim: int):
    rng = np.random.RandomState(0)
    image = [VISION_START] + [IMAGE_TOKEN] * (GRID[1] * GRID[2] // 4) + [VISION_END]
    before = 40
    rows = [list(rng.randint(3, 8000, before)) + image + list(rng.randint(3, 8000, text_tokens - before)) for _ in range(batch)]
    ids = np.asarray(rows, np.int64)
    pixels = rng.randn(batch * GRID[0] * GRID[1] * GRID[2], patch_dim).astype(np.float32)
    return ids, pixels, (GRID,) * batch


def timed(step, steps: int, warmup: int) -> list[float]:
    return common.median_time(step, steps, warmup)[1]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(_THREADS.value)
    torch.set_num_threads(_THREADS.value)
    hf = common.bench_hf_model()
    n_params = sum(p.numel() for p in hf.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = qvl.load_hf_checkpoint(tmp, remat=_REMAT.value)
    ids, pixels, grids = bench_inputs(_BATCH.value, _TEXT_TOKENS.value, model.config.vision.patch_dim)
    tokens = ids.size
    print(f"params {n_params / 1e6:.1f}M  batch {ids.shape[0]} x {ids.shape[1]} tokens  threads {_THREADS.value}")

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
    jax_times = timed(lambda: jax.block_until_ready(compiled(state, jids, jpix)), _STEPS.value, _WARMUP.value)
    jax_median = statistics.median(jax_times)
    peak = common.matmul_peak()
    print(f"fp32 matmul peak (2048^3 jnp.dot): {peak / 1e9:.1f} GFLOP/s")
    print(f"step FLOPs (XLA cost analysis, fwd+bwd): {flops / 1e9:.1f} GFLOP")
    print(f"jax/nnx      : median {jax_median:.2f} s/step  {tokens / jax_median:.0f} tokens/s  "
          f"{flops / jax_median / 1e9:.1f} GFLOP/s = {flops / jax_median / peak:.0%} of peak  (steps {[round(t, 2) for t in jax_times]})")
    if _SKIP_TORCH.value:
        return
    tids, tpix = torch.tensor(ids), torch.tensor(pixels)
    tgrid, mm = torch.tensor(grids), torch.tensor((ids == IMAGE_TOKEN).astype(np.int64))

    def torch_step():
        hf.zero_grad(set_to_none=True)
        logits = hf(input_ids=tids, pixel_values=tpix, image_grid_thw=tgrid, mm_token_type_ids=mm).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, tids[:, 1:, None])
        (-logp.mean()).backward()

    hf.train()
    torch_times = timed(torch_step, _STEPS.value, _WARMUP.value)
    torch_median = statistics.median(torch_times)
    print(f"transformers : median {torch_median:.2f} s/step  {tokens / torch_median:.0f} tokens/s  "
          f"{flops / torch_median / 1e9:.1f} GFLOP/s = {flops / torch_median / peak:.0%} of peak  (steps {[round(t, 2) for t in torch_times]})")
    print(f"ratio jax/transformers tokens/s: {torch_median / jax_median:.2f}x")


if __name__ == "__main__":
    cli.main(main)
