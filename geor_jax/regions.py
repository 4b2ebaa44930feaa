"""Chain of Region (CoR): GPS -> country -> state -> city, as text and back.

Geo-R supervises a model with the chain ``Country -> State -> City ->
Coordinates`` obtained by reverse-geocoding each photo's ground-truth GPS, so
no model-written reasoning is needed. This module computes the chain offline
(``reverse_geocoder``'s GeoNames table, country names from ``pycountry``),
renders it as the answer text the model learns, and parses a model's answer
back into coordinates and levels.

The answer format, one level per line::

    Country: Japan
    State: Hokkaido
    City: Biei
    Coordinates: (43.452002, 142.615358)
"""

import dataclasses
import functools
import math
import re
from collections.abc import Sequence

import numpy as np

COORDINATE_DECIMALS = 6

# pycountry's official names where a shorter common one is what people (and
# models) write; codes pycountry lacks (Kosovo uses the user-assigned XK).
_COUNTRY_NAME_OVERRIDES = {
    "BN": "Brunei",
    "CD": "Democratic Republic of the Congo",
    "CG": "Republic of the Congo",
    "FM": "Micronesia",
    "PS": "Palestine",
    "RU": "Russia",
    "VA": "Vatican City",
    "XK": "Kosovo",
}


@dataclasses.dataclass(frozen=True)
class Region:
    """The Chain of Region of one coordinate.

    ``distance_km`` is how far the matched GeoNames place is from the query:
    large values (open sea, polar ice) mean the chain is only the nearest land.
    """

    country: str
    country_code: str
    state: str
    city: str
    distance_km: float


@dataclasses.dataclass(frozen=True)
class ParsedAnswer:
    """A model answer parsed back into coordinates and levels.

    ``valid`` is the format reward: exactly one finite (lat, lon) pair within
    [-90, 90] x [-180, 180]. ``lat``/``lon`` hold the pair when exactly one
    was found (even if out of range) and NaN otherwise; levels are None when
    their label is absent.
    """

    lat: float
    lon: float
    valid: bool
    num_pairs: int
    country: str | None = None
    state: str | None = None
    city: str | None = None


@functools.cache
def country_name(code: str) -> str:
    """English country name for an ISO 3166 alpha-2 code (the code if unknown)."""
    if code in _COUNTRY_NAME_OVERRIDES:
        return _COUNTRY_NAME_OVERRIDES[code]
    import pycountry

    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return code
    return getattr(country, "common_name", None) or country.name


def _as_coordinates(coords) -> np.ndarray:
    """Validate ``coords`` as an (N, 2) float array of (lat, lon) degrees."""
    array = np.asarray(coords, dtype=np.float64)
    if array.ndim == 1 and array.shape == (2,):
        array = array[None]
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"coords must have shape (N, 2) as (lat, lon), got {array.shape}")
    bad = ~np.isfinite(array).all(axis=1)
    bad |= np.abs(array[:, 0]) > 90
    bad |= np.abs(array[:, 1]) > 180
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"coords[{index}] = {tuple(array[index])} is not a valid (lat, lon): "
            f"need finite lat in [-90, 90] and lon in [-180, 180] "
            f"({int(bad.sum())} bad rows in all)"
        )
    return array


def chain_of_region(coords) -> list[Region]:
    """Reverse-geocode a batch of (lat, lon) degrees into their Chains of Region.

    ``coords``: array-like of shape (N, 2), or one (lat, lon) pair. Runs offline
    on reverse_geocoder's GeoNames table (cities of 1000+ people) in one k-d
    tree query for the whole batch. A missing state (admin1) falls back to the
    county (admin2), then to the city, so every level is filled.
    """
    array = _as_coordinates(coords)
    if len(array) == 0:
        return []
    import reverse_geocoder

    # mode=1: single process (mode 2 forks, which deadlocks next to JAX).
    places = reverse_geocoder.search([tuple(row) for row in array], mode=1, verbose=False)
    place_coords = np.array([(float(p["lat"]), float(p["lon"])) for p in places])
    distances = _haversine_np(array, place_coords)
    return [
        Region(
            country=country_name(place["cc"]),
            country_code=place["cc"],
            state=place["admin1"] or place["admin2"] or place["name"],
            city=place["name"],
            distance_km=float(distance),
        )
        for place, distance in zip(places, distances)
    ]


def _haversine_np(a: np.ndarray, b: np.ndarray, radius_km: float = 6371.0) -> np.ndarray:
    """Host-side haversine between (N, 2) degree arrays (no JAX needed here)."""
    lat1, lon1, lat2, lon2 = np.radians(a[:, 0]), np.radians(a[:, 1]), np.radians(b[:, 0]), np.radians(b[:, 1])
    h = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def render_answer(region: Region, lat: float, lon: float, decimals: int = COORDINATE_DECIMALS) -> str:
    """The CoR answer text for one sample (the SFT target), one level a line."""
    return (
        f"Country: {region.country}\n"
        f"State: {region.state}\n"
        f"City: {region.city}\n"
        f"Coordinates: ({lat:.{decimals}f}, {lon:.{decimals}f})"
    )


# --- Parsing -----------------------------------------------------------------

# One coordinate: a decimal number, an optional degree sign, an optional
# hemisphere word. Not glued to letters, digits or a decimal point.
_COORDINATE = re.compile(
    r"(?<![\w.])(?P<number>[-+\u2212]?(?:\d+(?:\.\d*)?|\.\d+))"
    r"\s*(?:°|º|˚|deg(?:rees?)?\b)?"
    r"\s*(?P<hemisphere>north|south|east|west|[nsew])?(?![\w])",
    re.IGNORECASE,
)
# What may stand between the two numbers of a pair.
_PAIR_SEPARATOR = re.compile(
    r"\s*[,;/]?\s*(?:(?:lon(?:gitude)?|lng)\s*[:=]?\s*)?", re.IGNORECASE
)
_LEVEL_LABEL = re.compile(
    r"(?<![\w])(?P<label>country|"
    r"state(?:\s*/\s*(?:administrative\s+)?region)?|province|administrative\s+region|region|"
    r"city(?:\s+or\s+place)?|place|"
    r"coordinates?|gps|location)"
    r"\s*\**\s*[:\uff1a]",
    re.IGNORECASE,
)
_LEVEL_OF_LABEL = {"country": "country", "state": "state", "province": "state",
                   "administrative": "state", "region": "state", "city": "city",
                   "place": "city"}
_VALUE_TRIM = " \t*_`\"'.,;:-|#"


def _coordinate_value(match: re.Match) -> tuple[float, str]:
    """(signed degrees, hemisphere axis 'lat'/'lon'/'') of one coordinate match."""
    number = float(match["number"].replace("\u2212", "-"))
    hemisphere = (match["hemisphere"] or "").lower()[:1]
    if hemisphere in ("s", "w"):
        number = -abs(number)
    axis = {"n": "lat", "s": "lat", "e": "lon", "w": "lon"}.get(hemisphere, "")
    return number, axis


def _find_pairs(text: str) -> list[tuple[float, float, bool]]:
    """All (lat, lon, axes_consistent) pairs: adjacent coordinates joined by a separator.

    A bare-whitespace separator only joins two numbers that both carry a
    hemisphere ("43.4N 142.6E"). A pair written longitude first with
    hemispheres ("142.6E, 43.4N") is swapped into (lat, lon).
    """
    matches = list(_COORDINATE.finditer(text))
    pairs, i = [], 0
    while i + 1 < len(matches):
        first, second = matches[i], matches[i + 1]
        gap = text[first.end() : second.start()]
        joined = _PAIR_SEPARATOR.fullmatch(gap) is not None
        if joined and not gap.strip():
            joined = bool(first["hemisphere"] and second["hemisphere"])
        if not joined:
            i += 1
            continue
        (a, axis_a), (b, axis_b) = _coordinate_value(first), _coordinate_value(second)
        if axis_a == "lon" or axis_b == "lat":
            (a, axis_a), (b, axis_b) = (b, axis_b), (a, axis_a)
        consistent = axis_a in ("", "lat") and axis_b in ("", "lon")
        pairs.append((a, b, consistent))
        i += 2
    return pairs


def _find_levels(text: str) -> dict[str, str]:
    """Country/state/city values after their labels (first occurrence wins)."""
    labels = list(_LEVEL_LABEL.finditer(text))
    levels: dict[str, str] = {}
    for label, following in zip(labels, labels[1:] + [None]):
        level = _LEVEL_OF_LABEL.get(label["label"].split()[0].split("/")[0].lower())
        if level is None or level in levels:
            continue
        end = following.start() if following else len(text)
        value = text[label.end() : end].split("\n", 1)[0]
        value = re.sub(r"\s*\d+[.)]\s*$", "", value).strip(_VALUE_TRIM)
        if value:
            levels[level] = value
    return levels


def parse_answer(text: str) -> ParsedAnswer:
    """Parse a model's CoR answer into coordinates, a validity flag and levels.

    Tolerant of spacing, degree signs, N/S/E/W hemispheres (which set the sign
    and may come longitude first), markdown emphasis, numbered levels and label
    case ("State / Administrative Region", "Province", "City or Place"...).
    Valid only with exactly one (lat, lon) pair that is finite and in range.
    Never raises: any string, or a non-string, gives a ParsedAnswer.
    """
    if not isinstance(text, str):
        return ParsedAnswer(math.nan, math.nan, False, 0)
    pairs = _find_pairs(text)
    levels = _find_levels(text)
    if len(pairs) != 1:
        return ParsedAnswer(math.nan, math.nan, False, len(pairs), **levels)
    lat, lon, consistent = pairs[0]
    valid = (
        consistent
        and math.isfinite(lat)
        and math.isfinite(lon)
        and -90.0 <= lat <= 90.0
        and -180.0 <= lon <= 180.0
    )
    return ParsedAnswer(lat, lon, valid, 1, **levels)


def parse_answers(texts: Sequence[str]) -> list[ParsedAnswer]:
    """``parse_answer`` over a batch of completions."""
    return [parse_answer(text) for text in texts]
