"""Qwen2.5-VL and Qwen2-VL in Flax NNX, with HF checkpoint conversion.

Typical use::

    from geor_jax.models import qwen2_5_vl as qvl
    model = qvl.load_hf_checkpoint("/ckpt/Qwen2.5-VL-7B-Instruct", mesh=mesh)
    out = model(input_ids, attention_mask, pixel_values=patches, image_grid_thw=((1, 16, 16),))
"""

from geor_jax.models.qwen2_5_vl.cache import KVCache, init_cache, repeat_rows
from geor_jax.models.qwen2_5_vl.checkpoint_io import load_hf_checkpoint, save_hf_checkpoint
from geor_jax.models.qwen2_5_vl.config import (
    ConfigError,
    Qwen2VLConfig,
    TextConfig,
    VisionConfig,
    from_hf_dict,
    load_config,
    to_hf_dict,
)
from geor_jax.models.qwen2_5_vl.model import ModelOutput, Qwen2VL, token_logprobs
from geor_jax.models.qwen2_5_vl.rope import mrope_positions
from geor_jax.models.qwen2_5_vl.safetensors_io import CheckpointFileError
from geor_jax.models.qwen2_5_vl.vision import VisionTower

__all__ = [
    "CheckpointFileError", "ConfigError", "KVCache", "ModelOutput", "Qwen2VL", "Qwen2VLConfig", "TextConfig",
    "VisionConfig", "VisionTower", "from_hf_dict", "init_cache", "load_config", "load_hf_checkpoint",
    "mrope_positions", "repeat_rows", "save_hf_checkpoint", "to_hf_dict", "token_logprobs",
]
