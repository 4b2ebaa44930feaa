"""geor_jax.rewards: the jitted array reward and host-side completion scoring."""

import jax.numpy as jnp
import numpy as np
import pytest

from geor_jax import geo, regions, rewards

BIEI = (43.452002, 142.615358)
TOKYO = (35.6895, 139.69171)


def test_exact_answer_gets_full_reward():
    reward, distance = rewards.reward_from_arrays(
        jnp.array([BIEI[0]]), jnp.array([BIEI[1]]), jnp.array([True]), jnp.array([BIEI[0]]), jnp.array([BIEI[1]])
    )
    assert float(reward[0]) == pytest.approx(1.0) and float(distance[0]) == pytest.approx(0.0, abs=1e-3)


def test_reward_is_distance_reward_times_format():
    true_lat, true_lon = np.full(4, BIEI[0]), np.full(4, BIEI[1])
    pred_lat = np.array([TOKYO[0], np.nan, 0.0, -BIEI[0]])
    pred_lon = np.array([TOKYO[1], np.inf, 0.0, BIEI[1] - 180])
    valid = np.array([True, False, False, True])
    reward, distance = rewards.reward_from_arrays(pred_lat, pred_lon, valid, true_lat, true_lon)
    expected_km = float(geo.haversine_km(*TOKYO, *BIEI))
    assert float(distance[0]) == pytest.approx(expected_km, rel=1e-5)
    assert float(reward[0]) == pytest.approx(float(geo.distance_reward(expected_km)), rel=1e-5)
    # Invalid answers score 0 and have infinite distance, NaN inputs included.
    assert list(np.asarray(reward[1:3])) == [0.0, 0.0]
    assert np.isinf(np.asarray(distance[1:3])).all()
    assert float(reward[3]) == pytest.approx(0.0, abs=1e-6)  # antipode: past 20000 km
    assert np.isfinite(np.asarray(reward)).all()


def test_reward_keeps_batch_shape():
    shape = (2, 8)  # B prompts x G samples
    reward, distance = rewards.reward_from_arrays(
        jnp.zeros(shape), jnp.zeros(shape), jnp.ones(shape, bool), jnp.zeros(shape), jnp.ones(shape)
    )
    assert reward.shape == distance.shape == shape


def test_configurable_distance_reward():
    config = rewards.RewardConfig(distance="geor", breakpoints_km=(750.0, 3000.0, 20000.0))
    # 3000 km due north of the equator: the authors' middle knot.
    lat = np.degrees(3000.0 / geo.EARTH_RADIUS_KM)
    reward, _ = rewards.reward_from_arrays(np.array([lat]), np.zeros(1), np.ones(1, bool), np.zeros(1), np.zeros(1), config=config)
    assert float(reward[0]) == pytest.approx(0.2, abs=1e-5)
    exponential = rewards.RewardConfig(distance="exponential", distance_kwargs=(("tau_km", 3000.0),))
    reward, _ = rewards.reward_from_arrays(np.array([lat]), np.zeros(1), np.ones(1, bool), np.zeros(1), np.zeros(1), config=exponential)
    assert float(reward[0]) == pytest.approx(np.exp(-1.0), rel=1e-4)


def test_sum_combination_and_level_bonus():
    config = rewards.RewardConfig(
        combine="sum", distance_weight=1.0, format_weight=0.1, level_weights=(0.1, 0.2, 0.3)
    )
    matches = np.array([[True, True, False], [True, False, False]])
    reward, _ = rewards.reward_from_arrays(
        np.zeros(2), np.zeros(2), np.array([True, False]), np.zeros(2), np.zeros(2), matches, config=config
    )
    # valid exact: 1 + 0.1 + 0.1 + 0.2; invalid: no distance, no format, country bonus only.
    np.testing.assert_allclose(np.asarray(reward), [1.4, 0.1], rtol=1e-6)
    product = rewards.RewardConfig(level_weights=(0.5, 0.0, 0.0))
    reward, _ = rewards.reward_from_arrays(
        np.zeros(2), np.zeros(2), np.array([True, False]), np.zeros(2), np.zeros(2), matches, config=product
    )
    np.testing.assert_allclose(np.asarray(reward), [1.5, 0.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [(dict(distance="cosine"), "distance"), (dict(combine="max"), "combine"), (dict(level_weights=(1.0,)), "level_weights")],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        rewards.RewardConfig(**kwargs)


def test_score_completions_mixed_batch():
    truth = regions.Region("Japan", "JP", "Hokkaido", "Biei", 0.0)
    texts = [
        regions.render_answer(truth, *BIEI),  # perfect
        "Country: Japan\nState: Tokyo\nCity: Tokyo\nCoordinates: (35.6895, 139.69171)",  # ~890 km off
        "I have no idea.",  # no pair
        "Coordinates: (1, 2) or (3, 4)",  # two pairs
        "Coordinates: (100.0, 0.0)",  # out of range
        None,  # not even a string
    ]
    scored = rewards.score_completions(texts, [BIEI[0]] * 6, [BIEI[1]] * 6)
    assert list(scored.valid) == [True, True, False, False, False, False]
    assert scored.reward[0] == pytest.approx(1.0)
    assert 0.4 < scored.reward[1] < 0.5
    assert list(scored.reward[2:]) == [0.0] * 4
    assert np.isinf(scored.distance_km[2:]).all()
    assert scored.parsed[1].state == "Tokyo"


def test_score_completions_with_level_bonus():
    truth = regions.Region("United States", "US", "New York", "New York City", 0.0)
    texts = ["Country: USA\nState: new york\nCity: Brooklyn\nCoordinates: (40.7, -74.0)"]
    config = rewards.RewardConfig(level_weights=(0.1, 0.1, 0.1))
    scored = rewards.score_completions(texts, [40.7], [-74.0], [truth], config=config)
    assert scored.reward[0] == pytest.approx(1.2, abs=1e-4)
    with pytest.raises(ValueError, match="true Region"):
        rewards.score_completions(texts, [40.7], [-74.0], config=config)


def test_score_completions_length_mismatch():
    with pytest.raises(ValueError, match="2 texts but 1 true_lat"):
        rewards.score_completions(["a", "b"], [1.0], [2.0, 3.0])


def test_level_matches_is_accent_and_case_blind():
    truth = regions.Region("Brazil", "BR", "São Paulo", "São Paulo", 0.0)
    parsed = regions.parse_answer("Country: BR\nState: SAO PAULO\nCity: Campinas\nCoordinates: (1, 2)")
    assert rewards.level_matches(parsed, truth) == (True, True, False)
    assert rewards.level_matches(regions.parse_answer("nothing"), truth) == (False, False, False)
