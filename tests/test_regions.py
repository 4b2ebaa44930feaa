"""geor_jax.regions: Chain of Region of landmarks, rendering and tolerant parsing."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geor_jax import regions

LANDMARKS = [
    # (name, lat, lon, country, code, state)
    ("Eiffel Tower", 48.8584, 2.2945, "France", "FR", "Ile-de-France"),
    ("Statue of Liberty", 40.6892, -74.0445, "United States", "US", "New York"),
    ("Tokyo Tower", 35.6586, 139.7454, "Japan", "JP", "Tokyo"),
    ("Sydney Opera House", -33.8568, 151.2153, "Australia", "AU", "New South Wales"),
    ("Christ the Redeemer", -22.9519, -43.2105, "Brazil", "BR", "Rio de Janeiro"),
    ("Pristina", 42.6629, 21.1655, "Kosovo", "XK", "Pristina"),
    ("Taipei 101", 25.0340, 121.5645, "Taiwan", "TW", "Taipei"),
]


def test_chain_of_region_of_landmarks():
    coords = [(lat, lon) for _, lat, lon, *_ in LANDMARKS]
    chains = regions.chain_of_region(np.array(coords))
    assert len(chains) == len(LANDMARKS)
    for (name, _, _, country, code, state), chain in zip(LANDMARKS, chains):
        assert (chain.country, chain.country_code, chain.state) == (country, code, state), name
        assert chain.city and chain.distance_km < 30, name


def test_biei_is_in_hokkaido():
    (chain,) = regions.chain_of_region((43.452002, 142.615358))  # the paper's example
    assert (chain.country, chain.state) == ("Japan", "Hokkaido")


def test_missing_state_falls_back_to_city():
    (chain,) = regions.chain_of_region([(-54.2811, -36.5092)])  # Grytviken: no admin1
    assert chain.country_code == "GS" and chain.state == chain.city == "Grytviken"


def test_open_sea_reports_distance_to_nearest_place():
    (chain,) = regions.chain_of_region([(-40.0, -120.0)])  # South Pacific
    assert chain.distance_km > 1000


def test_country_names():
    assert regions.country_name("XK") == "Kosovo"
    assert regions.country_name("KR") == "South Korea"
    assert regions.country_name("GB") == "United Kingdom"
    assert regions.country_name("ZZ") == "ZZ"


@pytest.mark.parametrize(
    "coords, index",
    [([(0, 0), (91, 0)], 1), ([(0, 0), (0, 0), (0, 181)], 2), ([(math.nan, 0)], 0), ([(0, math.inf)], 0)],
)
def test_bad_coordinates_name_the_row(coords, index):
    with pytest.raises(ValueError, match=rf"coords\[{index}\]"):
        regions.chain_of_region(coords)


def test_bad_shape_and_empty():
    with pytest.raises(ValueError, match="shape"):
        regions.chain_of_region([(1.0, 2.0, 3.0)])
    assert regions.chain_of_region(np.zeros((0, 2))) == []


def test_render_answer_format():
    region = regions.Region("Japan", "JP", "Hokkaido", "Biei", 1.0)
    assert regions.render_answer(region, 43.452002, 142.615358) == (
        "Country: Japan\nState: Hokkaido\nCity: Biei\nCoordinates: (43.452002, 142.615358)"
    )


@pytest.mark.parametrize(
    "text, lat, lon, levels",
    [
        ("Country: Japan  State: Hokkaido  City: Biei Town  Coordinates: (43.452002, 142.615358)",
         43.452002, 142.615358, ("Japan", "Hokkaido", "Biei Town")),
        ("**Country:** United States\n**State / Administrative Region:** New York\n"
         "**City or Place:** NYC\n**Coordinates:** 40.71° N, 74.00° W", 40.71, -74.0,
         ("United States", "New York", "NYC")),
        ("1. Country: France 2. State: Ile-de-France 3. City: Paris 4. Coordinates: (48.85, 2.35)",
         48.85, 2.35, ("France", "Ile-de-France", "Paris")),
        ("COUNTRY : Chile\nprovince: Magallanes\ncity: Punta Arenas\nCoordinates:  ( -53.16 ,  -70.91 )",
         -53.16, -70.91, ("Chile", "Magallanes", "Punta Arenas")),
        ("coordinates: 142.6°E 43.4°N", 43.4, 142.6, (None, None, None)),
        ("Coordinates: 33.9 S, 18.4 E", -33.9, 18.4, (None, None, None)),
        ("Coordinates: [12.5, \u221270.25]", 12.5, -70.25, (None, None, None)),
        ("lat: 10.5, lon: -20", 10.5, -20.0, (None, None, None)),
        ("Coordinates: 90, -180", 90.0, -180.0, (None, None, None)),
    ],
)
def test_parse_valid_answers(text, lat, lon, levels):
    parsed = regions.parse_answer(text)
    assert parsed.valid and parsed.num_pairs == 1
    assert (parsed.lat, parsed.lon) == pytest.approx((lat, lon))
    assert (parsed.country, parsed.state, parsed.city) == levels


@pytest.mark.parametrize(
    "text, num_pairs",
    [
        ("", 0),
        ("I think this is somewhere in Japan.", 0),
        ("Coordinates: (43.4)", 0),
        ("Route66, 12km away", 0),
        ("Coordinates: (nan, inf)", 0),
        ("(1.0, 2.0) or maybe (3.0, 4.0)", 2),
        ("Coordinates: (95.0, 10.0)", 1),
        ("Coordinates: (45.0, 190.0)", 1),
        ("Coordinates: 45.0N, 10.0N", 1),
        ("Coordinates: (1" + "0" * 400 + ", 2)", 1),
    ],
)
def test_parse_invalid_answers(text, num_pairs):
    parsed = regions.parse_answer(text)
    assert not parsed.valid
    assert parsed.num_pairs == num_pairs


def test_parse_non_string_is_invalid():
    for value in (None, 42, b"Coordinates: (1, 2)"):
        assert not regions.parse_answer(value).valid


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_parse_never_raises(text):
    parsed = regions.parse_answer(text)
    assert isinstance(parsed.valid, bool)
    if parsed.valid:
        assert -90 <= parsed.lat <= 90 and -180 <= parsed.lon <= 180


_NAME = st.text(
    alphabet=st.characters(whitelist_categories=("Lu", "Ll"), max_codepoint=0x24F), min_size=1, max_size=20
).filter(lambda s: regions._LEVEL_LABEL.search(s + ":") is None)  # a name that is itself a label is ambiguous


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-90, 90, allow_nan=False),
    st.floats(-180, 180, allow_nan=False),
    _NAME, _NAME, _NAME,
)
def test_render_then_parse_round_trips(lat, lon, country, state, city):
    text = regions.render_answer(regions.Region(country, "XX", state, city, 0.0), lat, lon)
    parsed = regions.parse_answer(text)
    assert parsed.valid
    assert parsed.lat == pytest.approx(lat, abs=1e-6) and parsed.lon == pytest.approx(lon, abs=1e-6)
    assert (parsed.country, parsed.state, parsed.city) == (country, state, city)
