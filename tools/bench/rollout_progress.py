"""What a rollout's progress reports cost: ``geor_jax.sampling`` decode steps with
``SamplingConfig.progress_every_steps`` k = 0 (off) against k = 32, 8 and 1, in one process.

The DESIGN.md bench model (random Qwen2.5-VL, ~36M parameters, fp32) on CPU:
B prompts of one 224x224 image, G samples each, ``--new_tokens`` new tokens
at temperature 0.9, no early stop. Each report is one ``jax.debug.callback``
of three scalars (no log line is written: every rollout here is shorter than
``--progress_every_s``); the loop also reduces its ``done`` and ``lengths``
rows every step to feed it. Calls of every k are interleaved round by round,
so the machine's load shifts them alike. Prints, per k, the fastest and the
median seconds of a whole call, per decode step (fastest), and the cost of
one report against k = 0 (fastest call's difference over its reports); then the same over a loop of 1000 trivial
steps (one small matvec each), where a report's own cost is not lost in the
model's step time: microseconds per report, the floor of what k = 1 costs.

    PYTHONPATH=. python tools/bench/rollout_progress.py
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402
from geor_jax import sampling  # noqa: E402
from geor_jax.models import qwen2_5_vl as qvl  # noqa: E402
from geor_jax.rollout import Prompts  # noqa: E402
from geor_jax.run import cli  # noqa: E402
import sampling as bench_sampling  # noqa: E402  (tools/bench/sampling.py: its prompts and --threads, --prompts,
#                                                   --new_tokens)

_GROUP = flags.DEFINE_integer("group", 4, "Samples per prompt (G).", lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 9, "Timed calls of each k, interleaved (median reported).", lower_bound=1)
_EVERY = flags.DEFINE_list("every", ["0", "32", "8", "1"], "progress_every_steps values; the first is the baseline.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(bench_sampling._THREADS.value)
    hf = common.bench_hf_model()
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = qvl.load_hf_checkpoint(tmp)
    prompt_count = bench_sampling._PROMPTS.value
    ids, mask, pixels, grids = bench_sampling.bench_prompts(prompt_count, model.config.vision.patch_dim)
    prompts = Prompts(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(pixels), grids)
    new, everies = bench_sampling._NEW_TOKENS.value, [int(k) for k in _EVERY.value]
    base = sampling.SamplingConfig(max_new_tokens=new, temperature=0.9)
    configs = {k: dataclasses.replace(base, progress_every_steps=k) for k in everies}

    def call(k):
        out = sampling.sample_groups(model, prompts, jax.random.key(0), configs[k], group_size=_GROUP.value)
        return jax.block_until_ready(out)

    outputs = {k: call(k) for k in everies}  # compile each; the samples must not depend on k
    for k in everies[1:]:
        assert np.array_equal(np.asarray(outputs[k].tokens), np.asarray(outputs[everies[0]].tokens)), k
    times = {k: [] for k in everies}
    for _ in range(_ROUNDS.value):
        for k in everies:
            start = time.perf_counter()
            call(k)
            times[k].append(time.perf_counter() - start)
    rows = prompt_count * _GROUP.value
    print(f"rows {rows} (B {prompt_count} x G {_GROUP.value})  prompt {ids.shape[1]} tokens  new tokens {new}  "
          f"threads {bench_sampling._THREADS.value}  rounds {_ROUNDS.value}  load {common.load_average()}")
    micro = micro_report_cost(_ROUNDS.value)
    print("| progress_every_steps | fastest s/call | median s/call | ms/step (fastest / new tokens) | vs off | "
          "ms per report |")
    print("| --- | --- | --- | --- | --- | --- |")
    off = min(times[everies[0]])
    for k in everies:
        fastest, median = min(times[k]), float(np.median(times[k]))
        reports = len(range(k, new, k)) + 2 if k else 0  # every k-th step before the end, the end, the start
        per_report = f"{1e3 * (fastest - off) / reports:+.3f}" if k else "-"
        print(f"| {k} | {fastest:.3f} | {median:.3f} | {1e3 * fastest / new:.2f} | {fastest / off:.3f}x | "
              f"{per_report} |")
    print(f"trivial loop of 1000 steps: {1e6 * micro[0]:.2f} us/step without reports, {1e6 * micro[1]:.2f} us/step "
          f"with one every step: {1e6 * (micro[1] - micro[0]):.1f} us per report")


def micro_report_cost(rounds: int, steps: int = 1000) -> tuple[float, float]:
    """Seconds per step (fastest round) of a trivial jitted while loop without and with ``sampling``'s report
    every step."""
    weights = jnp.full((64, 64), 0.01, jnp.float32)

    def loop(report: bool):
        @jax.jit
        def run(x):
            def body(s):
                s = s.replace(step=s.step + 1, lengths=s.lengths + 1, tokens=jnp.tanh(weights @ s.tokens))
                if report:
                    sampling._report_progress(s, last=s.step >= steps)
                return s

            start = sampling._DecodeState(step=jnp.zeros((), jnp.int32), tokens=x, logprobs=x,
                                          lengths=jnp.zeros((8,), jnp.int32), done=jnp.zeros((8,), bool), cache=None)
            return jax.lax.while_loop(lambda s: s.step < steps, body, start).tokens
        return run

    runs = [loop(False), loop(True)]
    x = jnp.ones((64, 8), jnp.float32)
    for run in runs:
        jax.block_until_ready(run(x))
    times = [[], []]
    for _ in range(rounds):
        for i, run in enumerate(runs):
            start = time.perf_counter()
            jax.block_until_ready(run(x))
            jax.effects_barrier()
            times[i].append(time.perf_counter() - start)
    return tuple(min(t) / steps for t in times)


if __name__ == "__main__":
    cli.main(main)
