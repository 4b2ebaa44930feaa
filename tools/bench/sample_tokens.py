"""Per-step sampling cost: ``geor_jax.sampling.sample_tokens`` vs the formulations it replaced.

One decode step's sampling on (rows, vocab) float32 logits, inside a jitted
64-step ``fori_loop`` (as in the sampler's decode loop), median ms per step:
the library's inverse-CDF draw and bisection top-p against
``jax.random.categorical`` (one threefry draw per vocabulary entry) and a
sort-based top-p cut-off, in the same run.

    python tools/bench/sample_tokens.py [--rows=16 --vocab=8192]
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import common  # noqa: E402
from geor_jax import sampling  # noqa: E402
from geor_jax.run import cli  # noqa: E402

STEPS = 64
_ROWS = flags.DEFINE_integer("rows", 16, "Rows of logits (samples decoded at once).", lower_bound=1)
_VOCAB = flags.DEFINE_integer("vocab", 8192, "Vocabulary size.", lower_bound=2)


def per_step_ms(draw, logits: jax.Array) -> float:
    """Median ms of one ``draw(logits, key) -> (tokens, logprobs)`` in a jitted loop of STEPS steps."""
    rows = logits.shape[0]

    @jax.jit
    def run(logits, key):
        def body(i, carry):
            tokens, logprobs = draw(logits + carry[1][:, None] * 1e-9, jax.random.fold_in(key, i))
            return carry[0] + tokens, carry[1] + logprobs
        return jax.lax.fori_loop(0, STEPS, body, (jnp.zeros(rows, jnp.int32), jnp.zeros(rows)))

    key = jax.random.key(0)
    return 1e3 * common.median_time(lambda: jax.block_until_ready(run(logits, key)), 7)[0] / STEPS


def sorted_top_p(scaled: jax.Array, top_p: float) -> jax.Array:
    """The sort-based top-p cut-off the bisection replaced (same kept set)."""
    ordered = jnp.sort(scaled, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    kept = jnp.where(jnp.cumsum(probs, axis=-1) - probs < top_p, ordered, jnp.inf)
    return jnp.where(scaled < jnp.min(kept, axis=-1, keepdims=True), -jnp.inf, scaled)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.thread_flags(2)
    logits = jnp.asarray(np.random.RandomState(0).randn(_ROWS.value, _VOCAB.value).astype(np.float32))
    plain = sampling.SamplingConfig(temperature=0.9)
    nucleus = sampling.SamplingConfig(temperature=0.9, top_p=0.95)
    greedy = sampling.SamplingConfig(greedy=True)

    def categorical(config):
        def draw(logits, key):
            tokens = jax.random.categorical(key, sampling.filter_logits(logits, config)).astype(jnp.int32)
            return tokens, sampling.policy_logprobs(logits, tokens, config.temperature)
        return draw

    def sort_then_categorical(logits, key):
        tokens = jax.random.categorical(key, sorted_top_p(logits / 0.9, 0.95)).astype(jnp.int32)
        return tokens, sampling.policy_logprobs(logits, tokens, 0.9)

    rows = [
        ("greedy (sample_tokens, greedy=True)", lambda l, k: sampling.sample_tokens(l, k, greedy)),
        ("temperature 0.9: jax.random.categorical", categorical(plain)),
        ("temperature 0.9: sample_tokens (inverse CDF)", lambda l, k: sampling.sample_tokens(l, k, plain)),
        ("top-p 0.95: sort + categorical", sort_then_categorical),
        ("top-p 0.95: sample_tokens (bisection + inverse CDF)", lambda l, k: sampling.sample_tokens(l, k, nucleus)),
    ]
    print(f"rows {_ROWS.value}  vocab {_VOCAB.value}  load {common.load_average()}")
    print("| sampling | ms per step |\n| --- | ---: |")
    for name, draw in rows:
        print(f"| {name} | {per_step_ms(draw, logits):.3f} |", flush=True)


if __name__ == "__main__":
    cli.main(main)
