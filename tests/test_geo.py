"""geor_jax.geo: distances against an independent formula, rewards at every knot, metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geor_jax import geo

R = geo.EARTH_RADIUS_KM
PARIS = (48.8566, 2.3522)
NEW_YORK = (40.7128, -74.0060)


def reference_km(lat1, lon1, lat2, lon2, radius=R):
    """Float64 great-circle distance by the vector (atan2 of cross and dot) formula."""
    def unit(lat, lon):
        lat, lon = np.radians(lat), np.radians(lon)
        return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)

    lat1, lon1, lat2, lon2 = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (lat1, lon1, lat2, lon2)))
    a, b = unit(lat1, lon1), unit(lat2, lon2)
    cross = np.linalg.norm(np.cross(a, b), axis=-1)
    return radius * np.arctan2(cross, np.sum(a * b, axis=-1))


@pytest.mark.parametrize(
    "p, q, expected_km, tol_km",
    [
        (PARIS, NEW_YORK, 5837.0, 2.0),  # the classic textbook figure
        ((90.0, 0.0), (-90.0, 0.0), np.pi * R, 1e-3),  # pole to pole
        ((90.0, 0.0), (90.0, 123.0), 0.0, 1e-3),  # the pole has every longitude
        ((0.0, 179.5), (0.0, -179.5), np.pi * R / 180, 1e-3),  # across the antimeridian
        ((10.0, 20.0), (-10.0, -160.0), np.pi * R, 1e-3),  # antipodes
        ((43.452002, 142.615358), (43.452002, 142.615358), 0.0, 0.0),  # identical
    ],
)
def test_known_distances(p, q, expected_km, tol_km):
    d = geo.haversine_km(p[0], p[1], q[0], q[1])
    assert d.dtype == jnp.float32
    assert abs(float(d) - expected_km) <= max(tol_km, 1e-5 * expected_km)


def test_float64_matches_reference_tightly():
    rng = np.random.default_rng(0)
    lat1, lat2 = rng.uniform(-90, 90, (2, 1000))
    lon1, lon2 = rng.uniform(-180, 180, (2, 1000))
    with jax.enable_x64(True):
        d = geo.haversine_km(lat1, lon1, lat2, lon2)
        assert d.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(d), reference_km(lat1, lon1, lat2, lon2), rtol=1e-9, atol=1e-6)


def test_float32_matches_reference():
    rng = np.random.default_rng(1)
    lat1, lat2 = rng.uniform(-90, 90, (2, 20000)).astype(np.float32)
    lon1, lon2 = rng.uniform(-180, 180, (2, 20000)).astype(np.float32)
    # Stress the ill-conditioned ends: near-antipodal and near-identical pairs.
    near = rng.normal(0, 1e-3, (2, 1000)).astype(np.float32)
    lat2[:1000], lon2[:1000] = -lat1[:1000] + near[0], lon1[:1000] + 180 + near[1]
    lat2[1000:2000], lon2[1000:2000] = lat1[1000:2000] + near[0], lon1[1000:2000] + near[1]
    d = np.asarray(jax.jit(geo.haversine_km)(lat1, lon1, lat2, lon2))
    expected = reference_km(lat1, lon1, lat2, lon2)
    # Measured: at most ~4 m off anywhere, 2e-6 relative.
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=0.01)


def test_low_precision_inputs_compute_in_float32():
    d = geo.haversine_km(jnp.bfloat16(48.75), jnp.bfloat16(2.25), 40.75, -74.0)
    assert d.dtype == jnp.float32
    assert float(d) == pytest.approx(float(reference_km(48.75, 2.25, 40.75, -74.0)), rel=1e-5)


def test_short_distances_keep_precision_in_float32():
    # Metre-scale steps: exact up to the float32 rounding of the inputs themselves.
    for step_km in (0.001, 0.01, 1.0):
        lat2, lon2 = np.float32(45.0 + np.degrees(step_km / R)), np.float32(7.0 + 0.5 * step_km / 100)
        d = float(geo.haversine_km(np.float32(45.0), np.float32(7.0), lat2, lon2))
        assert d == pytest.approx(float(reference_km(45.0, 7.0, float(lat2), float(lon2))), rel=1e-4)


def test_broadcasts_over_leading_shapes():
    lat = jnp.zeros((2, 3, 4))
    d = geo.haversine_km(lat, 0.0, 0.0, jnp.arange(4.0))
    assert d.shape == (2, 3, 4)
    np.testing.assert_allclose(d[1, 2], reference_km(0, 0, 0, np.arange(4.0)), rtol=1e-5)


def test_radius_is_configurable():
    d6371 = geo.haversine_km(*PARIS, *NEW_YORK)
    d_mean = geo.haversine_km(*PARIS, *NEW_YORK, radius_km=geo.MEAN_EARTH_RADIUS_KM)
    assert float(d_mean / d6371) == pytest.approx(geo.MEAN_EARTH_RADIUS_KM / R, rel=1e-6)


@pytest.mark.parametrize("q", [(48.8566, 2.3522), (-48.8566, -177.6478), (10.0, 20.0)])
def test_gradient_is_finite_everywhere(q):
    # q: identical point, the antipode of Paris, and an ordinary point.
    grad = jax.grad(lambda lat, lon: geo.haversine_km(lat, lon, *PARIS), argnums=(0, 1))(*map(jnp.float32, q))
    assert all(np.isfinite(np.asarray(g)) for g in grad)


def test_gradient_matches_finite_difference():
    f = lambda lat: geo.haversine_km(lat, 10.0, 20.0, 30.0)  # noqa: E731
    with jax.enable_x64(True):
        g = float(jax.grad(f)(jnp.float64(5.0)))
        fd = float((f(jnp.float64(5.0 + 1e-6)) - f(jnp.float64(5.0 - 1e-6))) / 2e-6)
    assert g == pytest.approx(fd, rel=1e-6)


@pytest.mark.parametrize(
    "d, expected",
    [(0, 1.0), (375, 0.75), (750, 0.5), (1625, 0.35), (2500, 0.2), (11250, 0.1),
     (20000, 0.0), (30000, 0.0), (np.inf, 0.0)],
)
def test_paper_reward_at_breakpoints(d, expected):
    assert float(geo.distance_reward(jnp.float32(d))) == pytest.approx(expected, abs=1e-6)


def test_paper_reward_matches_written_formula():
    d = np.random.default_rng(2).uniform(0, 25000, 5000)

    def written(x):  # the paper's three cases, per sample
        if x <= 750:
            return 1.0 - 0.5 * x / 750
        if x <= 2500:
            return 0.5 - 0.3 * (x - 750) / 1750
        return max(0.0, 0.2 - 0.2 * (x - 2500) / 17500)

    np.testing.assert_allclose(geo.distance_reward(d.astype(np.float32)), [written(x) for x in d], atol=1e-6)


def test_authors_breakpoints():
    authors = dict(breakpoints_km=(750.0, 3000.0, 20000.0))
    got = geo.distance_reward(jnp.array([750.0, 3000.0, 1875.0]), **authors)
    np.testing.assert_allclose(got, [0.5, 0.2, 0.35], atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(values=(1.0, 0.0)), "one more value"), (dict(breakpoints_km=(750.0, 500.0, 20000.0)), "increasing")],
)
def test_reward_rejects_bad_breakpoints(kwargs, message):
    with pytest.raises(ValueError, match=message):
        geo.distance_reward(1.0, **kwargs)


def test_alternative_rewards():
    assert float(geo.exponential_reward(200.0)) == pytest.approx(np.exp(-1), rel=1e-6)
    assert float(geo.exponential_reward(0.0)) == 1.0
    assert float(geo.gre_reward(0.0)) == 1.0
    assert float(geo.gre_reward(500.0, theta_km=500.0)) == pytest.approx(2 / (1 + np.e), rel=1e-6)
    assert float(geo.geoguessr_score(0.0)) == 5000.0
    assert float(geo.geoguessr_score(1492.7)) == pytest.approx(5000 / np.e, rel=1e-6)
    assert set(geo.DISTANCE_REWARDS) == {"geor", "exponential", "gre", "geoguessr"}


def test_threshold_accuracy():
    d = jnp.array([0.5, 10.0, 150.0, 700.0, 2000.0, 5000.0, jnp.inf, 30.0])
    metrics = jax.jit(geo.threshold_accuracy)(d)
    assert [float(metrics[f"acc@{t:g}km"]) for t in geo.ACCURACY_THRESHOLDS_KM] == pytest.approx(
        [1 / 8, 2 / 8, 4 / 8, 5 / 8, 6 / 8]
    )
    assert float(metrics["median_km"]) == pytest.approx((150.0 + 700.0) / 2)


def test_threshold_accuracy_with_mask_and_odd_count():
    d = jnp.array([5.0, 100.0, 3000.0, 1.0, 1.0])
    metrics = geo.threshold_accuracy(d, thresholds_km=(10.0,), mask=jnp.array([1, 1, 1, 0, 0], bool))
    assert float(metrics["acc@10km"]) == pytest.approx(1 / 3)
    assert float(metrics["median_km"]) == 100.0
    empty = geo.threshold_accuracy(d, mask=jnp.zeros(5, bool))
    assert float(empty["acc@1km"]) == 0.0 and np.isnan(float(empty["median_km"]))
