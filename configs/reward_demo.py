"""Config for launch/reward_demo.py: score simulated answers for landmark photos."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0
    # Simulated "model" answers per landmark: Gaussian errors of these sizes
    # (km), plus one malformed answer, like one GRPO group per image.
    config.error_scales_km = (5.0, 100.0, 1000.0)
    config.reward = ml_collections.ConfigDict()
    config.reward.distance = "geor"  # see geor_jax.geo.DISTANCE_REWARDS
    config.reward.breakpoints_km = (750.0, 2500.0, 20000.0)  # authors' code: 3000 in the middle
    config.reward.combine = "product"
    config.reward.level_weights = (0.0, 0.0, 0.0)  # country, state, city bonuses
    return config
