"""MP16-Hard: keep the training samples far from every place the SFT model already solves.

Geo-R's RL stage drops every training sample within R km (200 by default)
of a "hotspot": a sample the SFT model already localises correctly. Groups of
completions on such easy places all score alike, so their GRPO advantages
vanish. Distances are found with a k-d tree over 3-D unit vectors: a
great-circle distance d is the chord 2 sin(d / 2R_earth), so one
nearest-neighbour query per sample answers "is any hotspot within R?"
exactly, in O((N + M) log M) instead of O(N * M).
"""

import math

import numpy as np
from scipy.spatial import cKDTree

from geor_jax import geo


def unit_vectors(lat, lon) -> np.ndarray:
    """(N, 3) unit vectors on the sphere for degree arrays ``lat``, ``lon``."""
    lat, lon = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def chord_of_km(distance_km: float, radius_km: float = geo.EARTH_RADIUS_KM) -> float:
    """Straight-line distance between unit vectors that are ``distance_km`` apart on the surface."""
    return 2.0 * math.sin(min(distance_km / radius_km, math.pi) / 2.0)


def correct_predictions(pred_lat, pred_lon, true_lat, true_lon, correct_km: float = 25.0) -> np.ndarray:
    """Boolean mask of predictions within ``correct_km`` of the truth (NaN predictions are wrong)."""
    pred_lat, pred_lon = np.asarray(pred_lat, np.float64), np.asarray(pred_lon, np.float64)
    a, b = unit_vectors(pred_lat, pred_lon), unit_vectors(true_lat, true_lon)
    chord = np.linalg.norm(a - b, axis=-1)
    return np.isfinite(chord) & (chord <= chord_of_km(correct_km))


def far_from_hotspots(lat, lon, hotspot_lat, hotspot_lon, radius_km: float = 200.0, workers: int = -1) -> np.ndarray:
    """Boolean mask over samples: True where every hotspot is farther than ``radius_km``.

    ``lat``/``lon``: (N,) training coordinates; ``hotspot_*``: (M,) coordinates
    of correctly solved samples. With no hotspots every sample is kept.
    """
    points = unit_vectors(lat, lon)
    if len(np.atleast_1d(hotspot_lat)) == 0:
        return np.ones(len(points), bool)
    tree = cKDTree(unit_vectors(hotspot_lat, hotspot_lon))
    limit = chord_of_km(radius_km)
    distance, _ = tree.query(points, k=1, distance_upper_bound=limit * (1 + 1e-12), workers=workers)
    return ~(distance <= limit)
