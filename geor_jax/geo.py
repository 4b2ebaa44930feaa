"""Great-circle distance, distance rewards and the geolocation benchmark metric.

Everything here is pure ``jax.numpy``: jittable, differentiable and batched
over any leading shape (inputs broadcast against each other). Angles are in
degrees, distances in kilometres.
"""

import math
from collections.abc import Sequence

import jax.numpy as jnp

# Geo-R (and most geolocation papers) use the 6371 km sphere. The IUGG mean
# Earth radius, 6371.0088 km, is exposed for users who want it.
EARTH_RADIUS_KM = 6371.0
MEAN_EARTH_RADIUS_KM = 6371.0088

# The benchmark thresholds: street, city, region, country, continent.
ACCURACY_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)

# Geo-R's piecewise-linear reward: value at 0 km, then (breakpoint, value)
# knots; linear in between and constant past the last knot. The paper's
# middle knot is 2500 km; the authors' released code uses 3000 km.
GEOR_BREAKPOINTS_KM = (750.0, 2500.0, 20000.0)
GEOR_BREAKPOINT_VALUES = (1.0, 0.5, 0.2, 0.0)


def haversine_km(lat1, lon1, lat2, lon2, radius_km: float = EARTH_RADIUS_KM):
    """Great-circle distance in km between points given in degrees.

    Latitudes in [-90, 90]; longitudes any (their gap is wrapped). The central
    angle is ``2 atan2(sqrt(h), sqrt(1 - h))`` with ``h`` the haversine and
    ``1 - h`` computed directly as the haversine to the antipode, so float32
    stays accurate from metres to antipodes (``asin(sqrt(h))`` loses
    kilometres there). Angle differences are taken in degrees, where they are
    exact, and cosines as sines of complements (``cos x = sin(90 - |x|)``).
    The gradient is 0, not NaN, at the kinks (identical, antipodal points).
    Computes in float32 at least (float64 if given float64).
    """
    dtype = jnp.promote_types(jnp.result_type(lat1, lon1, lat2, lon2), jnp.float32)
    lat1, lon1, lat2, lon2 = (jnp.asarray(x, dtype) for x in (lat1, lon1, lat2, lon2))
    dlon = lon2 - lon1
    dlon = dlon - 360.0 * jnp.round(dlon / 360.0)  # exact for small gaps
    cos_product = _sin_deg(90.0 - jnp.abs(lat1)) * _sin_deg(90.0 - jnp.abs(lat2))
    sin_half_dlon = _sin_deg(dlon / 2)
    cos_half_dlon = _sin_deg(90.0 - jnp.abs(dlon) / 2)
    hav = _sin_deg((lat2 - lat1) / 2) ** 2 + cos_product * sin_half_dlon**2
    hav_antipode = _sin_deg((lat1 + lat2) / 2) ** 2 + cos_product * cos_half_dlon**2
    return radius_km * 2.0 * _atan2_nonnegative(_safe_sqrt(hav), _safe_sqrt(hav_antipode))


# XLA's CPU sin/cos/atan2 are scalar library calls, 10-20x slower than
# NumPy's SIMD ones (tools/bench/rewards.py). The angles here are bounded, so
# short polynomials, which XLA vectorises, reach full float32/float64 accuracy.


def _odd_series(x, coefficient, terms: int):
    """``x * sum_k coefficient(k) x^(2k)`` for k < terms, by Horner in x^2."""
    x2 = x * x
    total = jnp.full_like(x, coefficient(terms - 1))
    for k in range(terms - 2, -1, -1):
        total = total * x2 + coefficient(k)
    return x * total


def _terms(x, float32_terms: int, float64_terms: int) -> int:
    return float64_terms if x.dtype == jnp.float64 else float32_terms


def _sin_deg(degrees):
    """sin of an angle in [-90, 90] degrees (Taylor series, error < 1 ulp)."""
    x = degrees * (math.pi / 180.0)
    return _odd_series(x, lambda k: (-1) ** k / math.factorial(2 * k + 1), _terms(x, 7, 11))


def _atan2_nonnegative(y, x):
    """atan2(y, x) for y, x >= 0, not both 0: an angle in [0, pi/2].

    Reduces to atan(t), t in [0, 1], then by atan t = pi/4 + atan((t-1)/(t+1))
    to |u| <= tan(pi/8), where the Taylor series converges fast.
    """
    swap = y > x
    t = jnp.where(swap, x, y) / jnp.where(swap, y, x)
    shift = t > math.tan(math.pi / 8)
    u = jnp.where(shift, (t - 1.0) / (t + 1.0), t)
    atan_u = _odd_series(u, lambda k: (-1) ** k / (2 * k + 1), _terms(u, 10, 21))
    atan_t = jnp.where(shift, math.pi / 4 + atan_u, atan_u)
    return jnp.where(swap, math.pi / 2 - atan_t, atan_t)


def _safe_sqrt(x):
    """sqrt of max(x, 0) with gradient 0 instead of inf at 0."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)


def distance_reward(
    d_km,
    breakpoints_km: Sequence[float] = GEOR_BREAKPOINTS_KM,
    values: Sequence[float] = GEOR_BREAKPOINT_VALUES,
):
    """Geo-R's piecewise-linear distance reward.

    ``values[0]`` at 0 km, ``values[i + 1]`` at ``breakpoints_km[i]``, linear in
    between and ``values[-1]`` beyond the last breakpoint. The defaults are the
    paper's: 1.0 at 0 km, 0.5 at 750, 0.2 at 2500, 0.0 at 20000 km and beyond.
    """
    breakpoints_km, values = tuple(map(float, breakpoints_km)), tuple(map(float, values))
    if len(values) != len(breakpoints_km) + 1:
        raise ValueError(
            f"distance_reward needs one more value than breakpoints, got "
            f"{len(breakpoints_km)} breakpoints and {len(values)} values"
        )
    knots = (0.0,) + breakpoints_km
    if any(b <= a for a, b in zip(knots, knots[1:])):
        raise ValueError(f"breakpoints_km must be positive and increasing, got {breakpoints_km}")
    d_km = jnp.asarray(d_km)
    # A sum of clipped ramps: elementwise, branch-free, exact at every knot.
    reward = jnp.full_like(d_km, values[0])
    for (x0, x1), (v0, v1) in zip(zip(knots, knots[1:]), zip(values, values[1:])):
        reward = reward + (v1 - v0) / (x1 - x0) * jnp.clip(d_km - x0, 0.0, x1 - x0)
    return reward


def exponential_reward(d_km, tau_km: float = 200.0):
    """``exp(-d / tau)``: GeoAgent's reward (tau = 200 km)."""
    return jnp.exp(-jnp.asarray(d_km) / tau_km)


def gre_reward(d_km, theta_km: float = 500.0):
    """GRE Suite's ``2 / (1 + exp(d / theta))``: 1 at 0 km, decaying to 0.

    The scale ``theta_km`` is a free choice; 500 km puts the half-value near
    the country threshold (d = theta * ln 3 ~ 549 km).
    """
    return 2.0 / (1.0 + jnp.exp(jnp.asarray(d_km) / theta_km))


def geoguessr_score(d_km, scale_km: float = 1492.7):
    """The GeoGuessr round score ``5000 exp(-d / 1492.7)`` (0 to 5000 points)."""
    return 5000.0 * jnp.exp(-jnp.asarray(d_km) / scale_km)


DISTANCE_REWARDS = {
    "geor": distance_reward,
    "exponential": exponential_reward,
    "gre": gre_reward,
    "geoguessr": geoguessr_score,
}


def threshold_accuracy(d_km, thresholds_km: Sequence[float] = ACCURACY_THRESHOLDS_KM, mask=None):
    """Fraction of predictions within each threshold, and the median error.

    ``d_km`` holds one distance per prediction; an invalid prediction should be
    given as ``inf`` so it counts as wrong everywhere. ``mask`` (same shape,
    bool) excludes padding. Returns ``{"acc@<t>km": fraction, ...,
    "median_km": median}`` over the included entries; jittable.
    """
    d_km = jnp.asarray(d_km).reshape(-1)
    mask = jnp.ones(d_km.shape, bool) if mask is None else jnp.asarray(mask, bool).reshape(-1)
    count = jnp.maximum(mask.sum(), 1)
    metrics = {
        f"acc@{t:g}km": jnp.sum((d_km <= t) & mask) / count for t in thresholds_km
    }
    # Masked median: push excluded entries to +inf, sort, take the middle of
    # the included prefix (average of the two middles for even counts).
    ordered = jnp.sort(jnp.where(mask, d_km, jnp.inf))
    lo = ordered[(count - 1) // 2]
    hi = ordered[count // 2]
    metrics["median_km"] = jnp.where(mask.any(), (lo + hi) / 2, jnp.nan)
    return metrics
