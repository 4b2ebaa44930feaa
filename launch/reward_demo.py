"""The geography core end to end, offline: landmarks -> Chain of Region -> answers -> rewards.

For each embedded landmark: reverse-geocode its GPS into the CoR target text,
simulate a group of model answers (right, off by growing distances, and
malformed), parse and score them with the Geo-R reward, then report the
benchmark accuracy of the simulated answers.

  .venv/bin/python launch/reward_demo.py [--config=configs/reward_demo.py] [--config.seed=1]
"""

import numpy as np
from absl import app
from ml_collections import config_flags

from geor_jax import geo, regions, rewards

_CONFIG = config_flags.DEFINE_config_file("config", "configs/reward_demo.py")

LANDMARKS = (
    ("Eiffel Tower", 48.8584, 2.2945),
    ("Statue of Liberty", 40.6892, -74.0445),
    ("Tokyo Tower", 35.6586, 139.7454),
    ("Sydney Opera House", -33.8568, 151.2153),
    ("Christ the Redeemer", -22.9519, -43.2105),
    ("Shirogane Blue Pond, Biei", 43.4930, 142.6144),
    ("Table Mountain", -33.9628, 18.4098),
    ("Machu Picchu", -13.1631, -72.5450),
)


def offset(lat: float, lon: float, error_km: float, rng: np.random.Generator) -> tuple[float, float]:
    """A point about ``error_km`` away in a random direction (small-angle step)."""
    bearing = rng.uniform(0, 2 * np.pi)
    dlat = np.degrees(error_km * np.cos(bearing) / geo.EARTH_RADIUS_KM)
    dlon = np.degrees(error_km * np.sin(bearing) / geo.EARTH_RADIUS_KM) / max(np.cos(np.radians(lat)), 1e-6)
    return float(np.clip(lat + dlat, -90, 90)), float((lon + dlon + 180) % 360 - 180)


def main(_):
    config = _CONFIG.value
    rng = np.random.default_rng(config.seed)
    reward_config = rewards.RewardConfig(
        distance=config.reward.distance,
        distance_kwargs=(("breakpoints_km", tuple(config.reward.breakpoints_km)),)
        if config.reward.distance == "geor" else (),
        combine=config.reward.combine,
        level_weights=tuple(config.reward.level_weights),
    )
    coords = np.array([(lat, lon) for _, lat, lon in LANDMARKS])
    chains = regions.chain_of_region(coords)

    texts, true_lat, true_lon, truths, names = [], [], [], [], []
    for (name, lat, lon), chain in zip(LANDMARKS, chains):
        print(f"\n{name}: CoR target\n  " + regions.render_answer(chain, lat, lon).replace("\n", "\n  "))
        guesses = [offset(lat, lon, scale, rng) for scale in config.error_scales_km]
        answers = [regions.render_answer(c, *g) for c, g in zip(regions.chain_of_region(guesses), guesses)]
        answers.append(f"It looks like {chain.country}, maybe near {chain.city}.")  # no coordinates
        texts += answers
        true_lat += [lat] * len(answers)
        true_lon += [lon] * len(answers)
        truths += [chain] * len(answers)
        names += [name] * len(answers)

    scored = rewards.score_completions(texts, true_lat, true_lon, truths, config=reward_config)
    print(f"\n{'landmark':<26} {'answer':<58} {'km':>9} {'reward':>7}")
    for name, text, d, r in zip(names, texts, scored.distance_km, scored.reward):
        print(f"{name:<26} {text.replace(chr(10), ' | ')[:58]:<58} {d:>9.1f} {r:>7.3f}")
    metrics = geo.threshold_accuracy(scored.distance_km)
    print("\nsimulated answers: " + ", ".join(f"{k} {float(v):.3f}" for k, v in metrics.items()))
    print(f"format-valid rate {scored.valid.mean():.3f}, mean reward {scored.reward.mean():.3f}")


if __name__ == "__main__":
    app.run(main)
