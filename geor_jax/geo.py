"""Great-circle distance, distance rewards and the geolocation benchmark metric.

Everything here is pure ``jax.numpy``: jittable, differentiable and batched
over any leading shape (inputs broadcast against each other). Angles are in
degrees, distances in kilometres.
"""

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

    The central angle is ``2 atan2(sqrt(a), sqrt(1 - a))`` with ``a`` the
    haversine of the angle and ``1 - a`` computed directly as the haversine to
    the antipode, so float32 stays accurate from metres up to antipodal
    points (the usual ``asin(sqrt(a))`` loses kilometres there). Coordinate
    differences are taken in degrees first, so nearby points keep their
    precision, across the antimeridian too. The gradient is 0, not NaN, where the distance has a kink
    (identical and antipodal points).
    """
    lat1, lon1, lat2, lon2 = (jnp.asarray(x) for x in (lat1, lon1, lat2, lon2))
    half_dlat = jnp.radians(lat2 - lat1) / 2
    # Wrap the longitude gap into [-180, 180] so pairs across the antimeridian
    # keep the precision of a small angle (shifting only wide gaps keeps
    # small ones exact).
    dlon = lon2 - lon1
    dlon = jnp.where(dlon > 180.0, dlon - 360.0, jnp.where(dlon < -180.0, dlon + 360.0, dlon))
    half_dlon = jnp.radians(dlon) / 2
    half_lat_sum = jnp.radians(lat1 + lat2) / 2
    cos_product = jnp.cos(jnp.radians(lat1)) * jnp.cos(jnp.radians(lat2))
    hav = jnp.sin(half_dlat) ** 2 + cos_product * jnp.sin(half_dlon) ** 2
    hav_antipode = jnp.sin(half_lat_sum) ** 2 + cos_product * jnp.cos(half_dlon) ** 2
    return radius_km * 2.0 * jnp.arctan2(_safe_sqrt(hav), _safe_sqrt(hav_antipode))


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
