"""Paired bootstrap intervals: how much better model B is than model A on the same held-out images.

Both models answer the same N images, so the question is about the per-image
pairs: resampling images with replacement (the same draw for both models)
and recomputing each metric's difference B - A gives its bootstrap
distribution; the 2.5 and 97.5 percentiles are the 95% interval. Several
seeds on the same images pool as the mean over seeds of each seed's
difference, with images resampled jointly across seeds. The resampling is
``scipy.stats.bootstrap`` (paired, percentile method: BCa's jackknife is
undefined for a statistic that is constant on the data, as accuracy
differences often are on a few hundred images).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np
from scipy import stats as scipy_stats

ACCURACY_KM = (25.0, 200.0, 750.0)


def _accuracy(km: float) -> Callable:
    return lambda reward, distance, axis: np.mean(distance <= km, axis=axis)


# Per-image metrics of a model's answers: each maps (reward, distance_km, axis) to the statistic over images.
METRICS: dict[str, Callable] = {
    "reward_mean": lambda reward, distance, axis: np.mean(reward, axis=axis),
    **{f"acc@{km:g}km": _accuracy(km) for km in ACCURACY_KM},
    "median_km": lambda reward, distance, axis: np.median(distance, axis=axis),
}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A paired difference (after - before) on the data, with its bootstrap interval."""

    estimate: float
    low: float
    high: float

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies wholly on one side of 0."""
        return self.low > 0 or self.high < 0

    def format(self, digits: int = 3) -> str:
        """``+0.012 [+0.004, +0.020]``."""
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}]"


def paired_difference(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray], metric: str,
                      *, num_resamples: int = 4000, confidence: float = 0.95, seed: int = 0) -> Interval:
    """``metric(after) - metric(before)`` over images, with its paired bootstrap interval.

    ``before``/``after`` hold per-image ``reward`` and ``distance_km`` (inf
    for an invalid answer), each of shape (N,) for one run or (N, K) for K
    seeds evaluated on the same N images: then the difference is the mean of
    the K seeds' differences and images are resampled jointly across seeds.
    A resample where both medians are infinite (most answers invalid) makes
    the median's interval NaN: no distance is defined there.
    """
    statistic = METRICS[metric]
    arrays = [np.asarray(side[key], np.float64) for side in (before, after) for key in ("reward", "distance_km")]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or len(next(iter(shapes))) not in (1, 2):
        raise ValueError(f"paired_difference: reward and distance_km of both runs must share one (N,) or (N, K) "
                         f"shape, got {[a.shape for a in arrays]}")
    if arrays[0].shape[0] < 2:
        raise ValueError(f"paired_difference needs at least 2 images, got {arrays[0].shape[0]}")
    # Seeds become separate paired samples (scipy resamples all samples with one index draw); images on axis -1.
    columns = [column for a in arrays for column in np.atleast_2d(a.T).reshape(-1, a.shape[0])]
    seeds = len(columns) // 4

    def difference(*samples, axis=-1):
        r0, d0, r1, d1 = (np.stack(samples[i * seeds:(i + 1) * seeds]) for i in range(4))
        return np.mean(statistic(r1, d1, axis) - statistic(r0, d0, axis), axis=0)

    with np.errstate(invalid="ignore"):  # inf - inf medians (over half the answers invalid) are NaN, as they are
        estimate = float(difference(*columns))
        result = scipy_stats.bootstrap(columns, difference, paired=True, vectorized=True, axis=-1,
                                       n_resamples=num_resamples, confidence_level=confidence, method="percentile",
                                       rng=np.random.default_rng(seed))
    return Interval(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high))


def paired_differences(before, after, **kwargs) -> dict[str, Interval]:
    """``paired_difference`` of every metric in ``METRICS``."""
    return {metric: paired_difference(before, after, metric, **kwargs) for metric in METRICS}
