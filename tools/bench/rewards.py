"""Benchmark: jitted batched reward vs vectorised NumPy vs a per-sample Python loop.

The loop is written the way reward functions in PyTorch GRPO trainers usually
are (and the Geo-R authors' script): ``math`` haversine and an if/else
piecewise reward per sample. NumPy runs the same formula as geor_jax
(``same formula``) and the common ``asin`` haversine (``asin form``).

  .venv/bin/python tools/bench/rewards.py
"""

import math
import time

import jax
import numpy as np
from absl import flags

from geor_jax import rewards
from geor_jax.run import cli

_SIZES = flags.DEFINE_list("sizes", ["1000", "65536"], "Batch sizes to time.")
_REPEATS = flags.DEFINE_integer("repeats", 30, "Timed repeats per method (median reported).")


def loop_reward(pred_lat, pred_lon, valid, true_lat, true_lon):
    """Per-sample reference: what a Python reward function does per completion."""
    out = []
    for plat, plon, ok, tlat, tlon in zip(pred_lat, pred_lon, valid, true_lat, true_lon):
        if not ok:
            out.append(0.0)
            continue
        p1, p2 = math.radians(plat), math.radians(tlat)
        dp, dl = math.radians(tlat - plat), math.radians(tlon - plon)
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        d = 2 * 6371.0 * math.asin(math.sqrt(min(1.0, a)))
        if d <= 750:
            r = 1.0 - 0.5 * d / 750
        elif d <= 2500:
            r = 0.5 - 0.3 * (d - 750) / 1750
        else:
            r = max(0.0, 0.2 - 0.2 * (d - 2500) / 17500)
        out.append(r)
    return out


def _piecewise_np(d):
    knots, values = (0.0, 750.0, 2500.0, 20000.0), (1.0, 0.5, 0.2, 0.0)
    r = np.full_like(d, values[0])
    for x0, x1, v0, v1 in zip(knots, knots[1:], values, values[1:]):
        r += np.float32((v1 - v0) / (x1 - x0)) * np.clip(d - np.float32(x0), 0, np.float32(x1 - x0))
    return r


def numpy_reward_same_formula(pred_lat, pred_lon, valid, true_lat, true_lon):
    """NumPy twin of geor_jax.rewards.reward_from_arrays (atan2 haversine)."""
    lat = np.where(valid, pred_lat, 0).astype(np.float32)
    lon = np.where(valid, pred_lon, 0).astype(np.float32)
    dlon = true_lon - lon
    dlon = np.where(dlon > 180, dlon - 360, np.where(dlon < -180, dlon + 360, dlon))
    hdlat, hdlon = np.radians(true_lat - lat) / 2, np.radians(dlon) / 2
    cos_product = np.cos(np.radians(lat)) * np.cos(np.radians(true_lat))
    hav = np.sin(hdlat) ** 2 + cos_product * np.sin(hdlon) ** 2
    hav_antipode = np.sin(np.radians(lat + true_lat) / 2) ** 2 + cos_product * np.cos(hdlon) ** 2
    d = np.float32(2 * 6371.0) * np.arctan2(np.sqrt(np.maximum(hav, 0)), np.sqrt(np.maximum(hav_antipode, 0)))
    return np.where(valid, _piecewise_np(d), 0)


def numpy_reward_asin(pred_lat, pred_lon, valid, true_lat, true_lon):
    """NumPy with the common asin haversine (cheaper, inexact near antipodes)."""
    lat, lon = np.radians(pred_lat), np.radians(pred_lon)
    tlat, tlon = np.radians(true_lat), np.radians(true_lon)
    a = np.sin((tlat - lat) / 2) ** 2 + np.cos(lat) * np.cos(tlat) * np.sin((tlon - lon) / 2) ** 2
    d = np.float32(2 * 6371.0) * np.arcsin(np.sqrt(np.clip(a, 0, 1)))
    return np.where(valid, _piecewise_np(d), 0)


def median_seconds(fn, repeats):
    fn()  # warm-up (and compile, for JAX)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(_):
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, numpy {np.__version__}")
    print(f"{'batch':>7} {'method':<22} {'median ms':>10} {'Msamples/s':>11} {'jit speed-up':>13}")
    for size in map(int, _SIZES.value):
        rng = np.random.default_rng(0)
        true = rng.uniform([-60, -180], [70, 180], (size, 2)).astype(np.float32)
        pred = (true + rng.normal(0, 5, (size, 2))).clip([-90, -180], [90, 180]).astype(np.float32)
        valid = rng.random(size) < 0.9
        args = (pred[:, 0], pred[:, 1], valid, true[:, 0], true[:, 1])
        device_args = tuple(jax.device_put(a) for a in args)
        np.testing.assert_allclose(
            np.asarray(rewards.reward_from_arrays(*device_args)[0]), numpy_reward_same_formula(*args), atol=1e-5
        )
        lists = tuple(a.tolist() for a in args)
        methods = {
            "geor_jax (jit)": lambda: rewards.reward_from_arrays(*device_args)[0].block_until_ready(),
            "numpy, same formula": lambda: numpy_reward_same_formula(*args),
            "numpy, asin form": lambda: numpy_reward_asin(*args),
            "python loop": lambda: loop_reward(*lists),
        }
        repeats = {"python loop": max(3, _REPEATS.value // 10)}
        times = {name: median_seconds(fn, repeats.get(name, _REPEATS.value)) for name, fn in methods.items()}
        for name, seconds in times.items():
            print(
                f"{size:>7} {name:<22} {seconds * 1e3:>10.3f} {size / seconds / 1e6:>11.2f} "
                f"{seconds / times['geor_jax (jit)']:>12.1f}x"
            )


if __name__ == "__main__":
    cli.main(main)
