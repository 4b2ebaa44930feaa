"""Rollout time by weight / compute dtype, in one process: ``geor_jax.sampling.sample_groups``
on the DESIGN.md bench config with float32 weights and compute, bfloat16 weights with
float32 compute (``layers.matmul_dtype``: bf16 operands, f32 results) and bfloat16 both,
the same random weights, calls alternating so load drifts hit every variant alike.
Prints each variant's median seconds per call and its speed-up over float32.

    python tools/bench/sampling_dtypes.py [--groups=8 --rounds=6]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402

common.thread_flags(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from geor_jax import sampling  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402

VARIANTS = {"float32": (jnp.float32, jnp.float32), "bf16 weights, f32 compute": (jnp.bfloat16, jnp.float32),
            "bfloat16": (jnp.bfloat16, jnp.bfloat16)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--new_tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    hf_config = dict(model_type="qwen2_5_vl", text_config=dict(common.BENCH_TEXT, model_type="qwen2_5_vl_text"),
                     vision_config=dict(common.BENCH_VISION), **common.BENCH_TOKEN_IDS)
    config = qvl.from_hf_dict(hf_config)
    weights = nnx.state(qvl.Qwen2VL(config, rngs=nnx.Rngs(0)))
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(3, 8000, (args.prompts, 106)).astype(np.int32))
    mask = jnp.ones(ids.shape, jnp.int32)
    sampling_config = sampling.SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.9)
    calls = {}
    for name, (param_dtype, dtype) in VARIANTS.items():
        model = nnx.eval_shape(lambda: qvl.Qwen2VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
        nnx.update(model, jax.tree.map(lambda a: a.astype(param_dtype), weights))
        calls[name] = (lambda m=model: jax.block_until_ready(
            sampling.sample_groups(m, ids, mask, jax.random.key(0), sampling_config, group_size=args.groups)))
        calls[name]()  # compile
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["float32"])
    print(f"G={args.groups}, B={args.prompts}, {args.new_tokens} new tokens, {args.rounds} rounds, "
          f"load {common.load_average()}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:28s} {median:.3f} s/call  {base / median:.2f}x float32")


if __name__ == "__main__":
    main()
