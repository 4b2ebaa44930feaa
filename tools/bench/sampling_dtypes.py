"""Rollout time by weight / compute dtype, in one process: ``geor_jax.sampling.sample_groups``
on the DESIGN.md bench config with float32 weights and compute, bfloat16 weights with
float32 compute (``layers.matmul_dtype``: bf16 operands, f32 results) and bfloat16 both,
the same random weights, calls alternating so load drifts hit every variant alike.
Prints each variant's median seconds per call and its speed-up over float32.

    python tools/bench/sampling_dtypes.py [--groups=8 --rounds=6]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402
from geor_jax import sampling  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.rollout import Prompts  # noqa: E402
from geor_jax.run import cli  # noqa: E402

VARIANTS = {"float32": (jnp.float32, jnp.float32), "bf16 weights, f32 compute": (jnp.bfloat16, jnp.float32),
            "bfloat16": (jnp.bfloat16, jnp.bfloat16)}
_GROUPS = flags.DEFINE_integer("groups", 8, "Samples per prompt (G).", lower_bound=1)
_PROMPTS = flags.DEFINE_integer("prompts", 2, "Prompts per call (B).", lower_bound=1)
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 64, "Tokens sampled per row.", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 6, "Timed calls of each variant (median reported).", lower_bound=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(2)
    hf_config = dict(model_type="qwen2_5_vl", text_config=dict(common.BENCH_TEXT, model_type="qwen2_5_vl_text"),
                     vision_config=dict(common.BENCH_VISION), **common.BENCH_TOKEN_IDS)
    config = qvl.from_hf_dict(hf_config)
    weights = nnx.state(qvl.Qwen2VL(config, rngs=nnx.Rngs(0)))
    rng = np.random.RandomState(0)
    ids = jnp.asarray(rng.randint(3, 8000, (_PROMPTS.value, 106)).astype(np.int32))
    prompts = Prompts(ids, jnp.ones(ids.shape, jnp.int32), pixel_values=None, grids=())  # text only
    sampling_config = sampling.SamplingConfig(max_new_tokens=_NEW_TOKENS.value, temperature=0.9)
    calls = {}
    for name, (param_dtype, dtype) in VARIANTS.items():
        model = nnx.eval_shape(lambda: qvl.Qwen2VL(config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0)))
        nnx.update(model, jax.tree.map(lambda a: a.astype(param_dtype), weights))
        calls[name] = (lambda m=model: jax.block_until_ready(
            sampling.sample_groups(m, prompts, jax.random.key(0), sampling_config, group_size=_GROUPS.value)))
        calls[name]()  # compile
    times = {name: [] for name in calls}
    for _ in range(_ROUNDS.value):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["float32"])
    print(f"G={_GROUPS.value}, B={_PROMPTS.value}, {_NEW_TOKENS.value} new tokens, {_ROUNDS.value} rounds, "
          f"load {common.load_average()}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:28s} {median:.3f} s/call  {base / median:.2f}x float32")


if __name__ == "__main__":
    cli.main(main)
