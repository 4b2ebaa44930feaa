"""geor_jax: Geo-R geolocation training (Chain of Region SFT + GRPO) in JAX.

Modules are imported on use (``from geor_jax import geo``) so that importing
the package stays cheap and does not start a JAX backend.
"""

__version__ = "0.1.0"
