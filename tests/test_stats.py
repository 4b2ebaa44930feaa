"""Paired bootstrap intervals against the exact bootstrap distribution, enumerated by brute force."""

import itertools

import numpy as np
import pytest

from geor_jax import stats


def exact_distribution(before, after, metric):
    """The metric difference under every one of the N**N equally likely resamples of the N images."""
    statistic = stats.METRICS[metric]
    n = before["reward"].shape[0]
    values = []
    for rows in itertools.product(range(n), repeat=n):
        rows = list(rows)
        per_seed = (statistic(after["reward"][rows], after["distance_km"][rows], 0)
                    - statistic(before["reward"][rows], before["distance_km"][rows], 0))
        values.append(np.mean(per_seed))
    return np.array(values)


def runs(n, seeds=None, seed=0, invalid=True):
    """Two runs' per-image results; ``invalid``: some answers invalid (infinite distance)."""
    rng = np.random.default_rng(seed)
    shape = (n,) if seeds is None else (n, seeds)
    choices = [5.0, 100.0, 400.0, 900.0] + [np.inf] * invalid
    distance = [rng.choice(choices, size=shape) for _ in range(2)]
    return [{"distance_km": d, "reward": np.where(np.isfinite(d), 1 - np.minimum(d, 2000) / 2000, 0.0)}
            for d in distance]


@pytest.mark.parametrize("metric", ["reward_mean", "acc@200km", "median_km"])
@pytest.mark.parametrize("n, seeds", [(5, None), (5, 2)])
def test_interval_matches_the_enumerated_bootstrap(metric, n, seeds):
    """The Monte-Carlo percentiles fall between the exact distribution's 1.5/3.5 and 96.5/98.5 percentiles."""
    before, after = runs(n, seeds, invalid=metric != "median_km")  # medians of mostly invalid answers: NaN
    exact = exact_distribution(before, after, metric)
    got = stats.paired_difference(before, after, metric, num_resamples=20000, seed=1)
    direct = np.mean(stats.METRICS[metric](after["reward"], after["distance_km"], 0)
                     - stats.METRICS[metric](before["reward"], before["distance_km"], 0))
    assert got.estimate == pytest.approx(direct)
    low, high = np.quantile(exact, [0.015, 0.035]), np.quantile(exact, [0.965, 0.985])
    assert low[0] <= got.low <= low[1], (got, low)
    assert high[0] <= got.high <= high[1], (got, high)


def test_a_constant_improvement_has_a_point_interval():
    before, _ = runs(50)
    after = {"reward": before["reward"] + 0.01, "distance_km": before["distance_km"]}
    reward = stats.paired_difference(before, after, "reward_mean")
    assert reward.low == pytest.approx(0.01) and reward.high == pytest.approx(0.01) and reward.excludes_zero
    same = stats.paired_difference(before, after, "acc@25km")
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0) and not same.excludes_zero


def test_mismatched_runs_are_refused():
    before, after = runs(8)
    with pytest.raises(ValueError, match="share one"):
        stats.paired_difference(before, {k: v[:7] for k, v in after.items()}, "reward_mean")
    with pytest.raises(ValueError, match="at least 2 images"):
        stats.paired_difference(*runs(1), "reward_mean")
