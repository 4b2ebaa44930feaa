"""Geo-R rewards: completion text -> (lat, lon, valid) on host, then a jitted reward.

The reward of one completion is, as in the paper, ``distance * format``: the
distance reward of its Haversine error (``geo.DISTANCE_REWARDS``) times 1 if
the answer holds exactly one valid (lat, lon) pair, else 0. Both the
combination (product or weighted sum) and optional bonuses for naming the
right country / state / city are configurable through ``RewardConfig``.
"""

import dataclasses
import functools
import inspect
import re
import unicodedata
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pycountry

from geor_jax import config_fields, geo, regions

LEVELS = ("country", "state", "city")


def _distance_kwargs_fit(pairs) -> str | None:
    return None if all(isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str) for p in pairs) else \
        f"must be (name, value) pairs, got {pairs!r}"


def _increasing_breakpoints(breakpoints) -> str | None:
    knots = (0.0, *breakpoints)
    if len(breakpoints) != len(geo.GEOR_BREAKPOINT_VALUES) - 1 or any(b <= a for a, b in zip(knots, knots[1:])):
        return f"must be {len(geo.GEOR_BREAKPOINT_VALUES) - 1} positive increasing distances, got {breakpoints!r}"
    return None


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How completions are rewarded (hashable: a static argument under jit).

    distance: name in ``geo.DISTANCE_REWARDS`` ("geor", "exponential", "gre",
      "geoguessr"); its keyword arguments as (name, value) pairs in
      ``distance_kwargs`` (e.g. ``(("tau_km", 100.0),)``), except the Geo-R
      reward's breakpoints, which are ``breakpoints_km`` (the paper's 750 /
      2500 / 20000 km; the authors' code uses 3000 km as the middle one).
    combine: "product" -> format * (distance + bonus) (the paper's, bonus 0);
      "sum" -> distance_weight * distance + format_weight * format + bonus,
      where an invalid answer still gets no distance reward.
    level_weights: bonus per matched (country, state, city) level.
    radius_km: Earth radius for the Haversine distance.
    """

    distance: str = config_fields.field("geor", config_fields.one_of(*geo.DISTANCE_REWARDS))
    breakpoints_km: tuple[float, ...] = config_fields.field(geo.GEOR_BREAKPOINTS_KM, _increasing_breakpoints)
    distance_kwargs: tuple[tuple[str, object], ...] = config_fields.field((), _distance_kwargs_fit)
    combine: str = config_fields.field("product", config_fields.one_of("product", "sum"))
    distance_weight: float = 1.0
    format_weight: float = 0.0
    level_weights: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius_km: float = config_fields.field(geo.EARTH_RADIUS_KM, config_fields.greater_than(0))

    def __post_init__(self):
        config_fields.check(self)
        accepted = set(inspect.signature(geo.DISTANCE_REWARDS[self.distance]).parameters) - {"d_km", "breakpoints_km"}
        unknown = sorted(set(dict(self.distance_kwargs)) - accepted)
        if unknown:
            raise config_fields.ConfigError("RewardConfig.distance_kwargs",
                                            f"{unknown} are not arguments of the {self.distance!r} reward "
                                            f"(it takes {sorted(accepted)})")

    @property
    def uses_levels(self) -> bool:
        """Whether any region-level bonus is on (level matching is host work)."""
        return any(w != 0 for w in self.level_weights)

    def distance_arguments(self) -> dict:
        """Keyword arguments of the distance reward function."""
        extra = {"breakpoints_km": self.breakpoints_km} if self.distance == "geor" else {}
        return {**dict(self.distance_kwargs), **extra}


@functools.partial(jax.jit, static_argnames="config")
def reward_from_arrays(
    pred_lat,
    pred_lon,
    valid,
    true_lat,
    true_lon,
    level_matches=None,
    config: RewardConfig = RewardConfig(),
):
    """Rewards and distances for a batch of parsed predictions (jitted).

    All arrays share a shape (any); ``level_matches`` adds a trailing axis of 3
    booleans (country, state, city). Predictions where ``valid`` is False may
    hold anything (NaN included): they are masked before any arithmetic.
    Returns ``(reward, distance_km)``; distance is ``inf`` where invalid.
    """
    valid = jnp.asarray(valid, bool)
    lat = jnp.where(valid, pred_lat, 0.0)
    lon = jnp.where(valid, pred_lon, 0.0)
    distance_km = geo.haversine_km(lat, lon, true_lat, true_lon, radius_km=config.radius_km)
    distance_reward = geo.DISTANCE_REWARDS[config.distance](distance_km, **config.distance_arguments())
    distance_reward = jnp.where(valid, distance_reward, 0.0)
    format_reward = valid.astype(distance_reward.dtype)
    bonus = jnp.zeros_like(distance_reward)
    if level_matches is not None:
        weights = jnp.asarray(config.level_weights, distance_reward.dtype)
        bonus = jnp.sum(jnp.asarray(level_matches, distance_reward.dtype) * weights, axis=-1)
    if config.combine == "product":
        reward = format_reward * (distance_reward + bonus)
    else:
        reward = config.distance_weight * distance_reward + config.format_weight * format_reward + bonus
    return reward, jnp.where(valid, distance_km, jnp.inf)


def normalize_place(name: str) -> str:
    """Casefolded, accent-free, punctuation-free form of a place name for matching."""
    decomposed = unicodedata.normalize("NFKD", name)
    ascii_only = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w\s]", " ", ascii_only.casefold()).split())


@functools.cache
def _country_code_of(name: str) -> str | None:
    """ISO alpha-2 code a country name or code refers to (pycountry), if any."""
    try:
        return pycountry.countries.lookup(name.strip()).alpha_2
    except LookupError:
        return None


def level_matches(parsed: regions.ParsedAnswer, truth: regions.Region) -> tuple[bool, bool, bool]:
    """Whether the predicted country, state and city name the true ones.

    Country also matches through ISO codes and official names ("USA",
    "United States of America", "US" all match United States).
    """
    def same(predicted: str | None, actual: str) -> bool:
        return predicted is not None and normalize_place(predicted) == normalize_place(actual)

    country = same(parsed.country, truth.country) or (
        parsed.country is not None and _country_code_of(parsed.country) == truth.country_code
    )
    return country, same(parsed.state, truth.state), same(parsed.city, truth.city)


@dataclasses.dataclass(frozen=True)
class ScoredCompletions:
    """``score_completions`` output: one entry per completion (NumPy arrays)."""

    reward: np.ndarray
    distance_km: np.ndarray
    valid: np.ndarray
    parsed: list[regions.ParsedAnswer]


def score_completions(
    texts: Sequence[str],
    true_lat,
    true_lon,
    true_regions: Sequence[regions.Region] | None = None,
    config: RewardConfig = RewardConfig(),
) -> ScoredCompletions:
    """Reward a batch of completion strings against ground-truth coordinates.

    Parses every text on the host (malformed ones become invalid and score 0,
    never an exception), then runs the jitted reward once on the batch.
    ``true_regions`` (one Region per text) is needed only for level bonuses.
    """
    true_lat = np.asarray(true_lat, np.float32).reshape(-1)
    true_lon = np.asarray(true_lon, np.float32).reshape(-1)
    if not len(texts) == len(true_lat) == len(true_lon):
        raise ValueError(
            f"score_completions got {len(texts)} texts but {len(true_lat)} true_lat "
            f"and {len(true_lon)} true_lon"
        )
    if config.uses_levels and (true_regions is None or len(true_regions) != len(texts)):
        raise ValueError("RewardConfig.level_weights are set: pass one true Region per text")
    parsed = regions.parse_answers(texts)
    valid = np.array([p.valid for p in parsed], bool)
    lat = np.array([p.lat if p.valid else 0.0 for p in parsed], np.float32)
    lon = np.array([p.lon if p.valid else 0.0 for p in parsed], np.float32)
    matches = None
    if config.uses_levels:
        matches = np.array([level_matches(p, r) for p, r in zip(parsed, true_regions)], bool)
    reward, distance = reward_from_arrays(lat, lon, valid, true_lat, true_lon, matches, config=config)
    return ScoredCompletions(np.asarray(reward), np.asarray(distance), valid, parsed)
