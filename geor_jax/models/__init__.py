"""Model ports (Flax NNX) used by geor_jax."""
