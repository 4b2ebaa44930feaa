"""Benchmark: Chain of Region for a batch of random land-ish coordinates.

  .venv/bin/python tools/bench/chain_of_region.py --size=100000
"""

import time

import numpy as np
from absl import flags

from geor_jax import regions
from geor_jax.run import cli

_SIZE = flags.DEFINE_integer("size", 100_000, "Coordinates per call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls after the first (median reported).")


def main(_):
    coords = np.random.default_rng(0).uniform([-60, -180], [70, 180], (_SIZE.value, 2))
    start = time.perf_counter()
    regions.chain_of_region(coords[:1])
    print(f"first call (loads the GeoNames table): {time.perf_counter() - start:.2f} s")
    times = []
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        chains = regions.chain_of_region(coords)
        times.append(time.perf_counter() - start)
    median = float(np.median(times))
    print(f"{_SIZE.value} coordinates: median {median:.3f} s ({_SIZE.value / median / 1e3:.0f}k/s), "
          f"{len({c.country_code for c in chains})} countries")


if __name__ == "__main__":
    cli.main(main)
