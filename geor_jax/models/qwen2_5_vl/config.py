"""Architecture config for Qwen2.5-VL and Qwen2-VL, read from a HF config.json.

The dataclasses hold only what the JAX model needs. ``from_hf_dict`` accepts
both the transformers 5.x layout (nested ``text_config`` / ``vision_config``)
and the flat layout of the original Hub checkpoints, and ``validate`` raises
``ConfigError`` naming the offending field, so a broken checkpoint fails at
load time rather than as a shape error deep inside jit.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from geor_jax import config_fields

QWEN2_5_VL = "qwen2_5_vl"
QWEN2_VL = "qwen2_vl"


class ConfigError(ValueError):
    """A config field has a value the model cannot run with."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """Vision tower. ``variant`` picks the block style (2.5: RMSNorm, SwiGLU,
    windows; 2: LayerNorm, QuickGELU MLP, full attention only)."""

    variant: str = QWEN2_5_VL
    depth: int = 32
    hidden_size: int = 1280
    num_heads: int = 16
    intermediate_size: int = 3420
    out_hidden_size: int = 3584
    hidden_act: str = "silu"
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self):
        config_fields.check(self)  # types only (lists from JSON become tuples); ``validate`` checks values

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened input patch (channels x time x height x width)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def merge_unit(self) -> int:
        """Patches merged into one language-model token."""
        return self.spatial_merge_size**2

    @property
    def uses_windows(self) -> bool:
        return self.variant == QWEN2_5_VL


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Qwen2 decoder with multimodal (3-D) rotary embeddings."""

    vocab_size: int = 152064
    hidden_size: int = 3584
    intermediate_size: int = 18944
    num_layers: int = 28
    num_heads: int = 28
    num_kv_heads: int = 4
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1000000.0
    mrope_section: tuple[int, ...] = (16, 24, 24)
    tie_word_embeddings: bool = False

    def __post_init__(self):
        config_fields.check(self)  # types only (lists from JSON become tuples); ``validate`` checks values

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
    """Whole vision-language model: text decoder, vision tower, special tokens."""

    text: TextConfig
    vision: VisionConfig
    model_type: str = QWEN2_5_VL
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653

    def __post_init__(self):
        validate(self)


_SUPPORTED_ACTS = {"silu", "quick_gelu", "gelu"}


def validate(config: Qwen2VLConfig) -> None:
    """Raise ``ConfigError`` (naming the field) if the model cannot be built."""
    text, vision = config.text, config.vision
    if config.model_type not in (QWEN2_5_VL, QWEN2_VL):
        raise ConfigError("model_type", f"expected {QWEN2_5_VL!r} or {QWEN2_VL!r}, got {config.model_type!r}")
    if vision.variant != config.model_type:
        raise ConfigError("vision_config.variant", f"{vision.variant!r} does not match model_type {config.model_type!r}")
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads"):
        if getattr(text, name) <= 0:
            raise ConfigError(f"text_config.{name}", f"must be positive, got {getattr(text, name)}")
    if text.hidden_size % text.num_heads:
        raise ConfigError(
            "text_config.num_attention_heads",
            f"hidden_size {text.hidden_size} is not divisible by {text.num_heads} heads",
        )
    if text.num_heads % text.num_kv_heads:
        raise ConfigError(
            "text_config.num_key_value_heads",
            f"{text.num_heads} attention heads are not a multiple of {text.num_kv_heads} key/value heads",
        )
    if text.head_dim % 2:
        raise ConfigError("text_config.hidden_size", f"head_dim {text.head_dim} must be even for rotary embeddings")
    if len(text.mrope_section) != 3 or sum(text.mrope_section) != text.head_dim // 2:
        raise ConfigError(
            "text_config.rope_parameters.mrope_section",
            f"{list(text.mrope_section)} must be 3 numbers summing to head_dim/2 = {text.head_dim // 2}",
        )
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        token = getattr(config, name)
        if not 0 <= token < text.vocab_size:
            raise ConfigError(name, f"{token} is outside the vocabulary (vocab_size {text.vocab_size})")
    if vision.out_hidden_size != text.hidden_size:
        raise ConfigError(
            "vision_config.out_hidden_size",
            f"vision output size {vision.out_hidden_size} != text hidden_size {text.hidden_size}",
        )
    if vision.hidden_size % vision.num_heads:
        raise ConfigError(
            "vision_config.num_heads", f"hidden_size {vision.hidden_size} is not divisible by {vision.num_heads} heads"
        )
    if vision.head_dim % 4:
        raise ConfigError("vision_config.hidden_size", f"vision head_dim {vision.head_dim} must be a multiple of 4")
    for field, act in (("text_config.hidden_act", text.hidden_act), ("vision_config.hidden_act", vision.hidden_act)):
        if act not in _SUPPORTED_ACTS:
            raise ConfigError(field, f"unsupported activation {act!r}; expected one of {sorted(_SUPPORTED_ACTS)}")
    if config.model_type == QWEN2_VL and vision.intermediate_size % vision.hidden_size:
        raise ConfigError("vision_config.mlp_ratio", "Qwen2-VL needs an integer mlp_ratio")
    if vision.uses_windows:
        unit = vision.spatial_merge_size * vision.patch_size
        if vision.window_size <= 0 or vision.window_size % unit:
            raise ConfigError(
                "vision_config.window_size",
                f"{vision.window_size} must be a positive multiple of patch_size*spatial_merge_size = {unit}",
            )
        bad = [i for i in vision.fullatt_block_indexes if not 0 <= i < vision.depth]
        if bad:
            raise ConfigError("vision_config.fullatt_block_indexes", f"{bad} outside 0..depth-1 ({vision.depth})")


def _rope_parameters(section: dict[str, Any]) -> dict[str, Any]:
    """Rope settings from either ``rope_parameters`` (5.x) or ``rope_scaling``/``rope_theta`` (4.x)."""
    params = dict(section.get("rope_scaling") or {})
    params.update(section.get("rope_parameters") or {})
    if "rope_theta" in section and "rope_theta" not in params:
        params["rope_theta"] = section["rope_theta"]
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError("text_config.rope_parameters.rope_type", f"only default/mrope rope is supported, got {rope_type!r}")
    return params


def from_hf_dict(hf: dict[str, Any]) -> Qwen2VLConfig:
    """Build a validated config from a HF ``config.json`` dict (nested or flat)."""
    model_type = hf.get("model_type", QWEN2_5_VL)
    text = dict(hf.get("text_config") or {})
    for key, value in hf.items():  # flat (pre-5.x) layout: text fields at top level
        if key not in ("text_config", "vision_config") and key not in text:
            text[key] = value
    vision = dict(hf.get("vision_config") or {})
    rope = _rope_parameters(text)
    vision_rope = vision.get("rope_parameters") or {}
    tie = bool(hf.get("tie_word_embeddings", False) or text.get("tie_word_embeddings", False))
    text_config = TextConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=text["num_attention_heads"],
        num_kv_heads=text.get("num_key_value_heads") or text["num_attention_heads"],
        hidden_act=text.get("hidden_act", "silu"),
        rms_norm_eps=text.get("rms_norm_eps", 1e-6),
        rope_theta=float(rope.get("rope_theta", 1000000.0)),
        mrope_section=tuple(rope.get("mrope_section", (16, 24, 24))),
        tie_word_embeddings=tie,
    )
    common = dict(
        variant=model_type,
        depth=vision["depth"],
        num_heads=vision["num_heads"],
        in_channels=vision.get("in_channels", 3),
        patch_size=vision.get("patch_size", 14),
        temporal_patch_size=vision.get("temporal_patch_size", 2),
        spatial_merge_size=vision.get("spatial_merge_size", 2),
        rope_theta=float(vision_rope.get("rope_theta", 10000.0)),
    )
    if model_type == QWEN2_VL:
        vision_config = VisionConfig(
            hidden_size=vision["embed_dim"],
            intermediate_size=int(vision["embed_dim"] * vision.get("mlp_ratio", 4)),
            out_hidden_size=vision["hidden_size"],
            hidden_act=vision.get("hidden_act", "quick_gelu"),
            window_size=0,
            fullatt_block_indexes=tuple(range(vision["depth"])),
            **common,
        )
    else:
        vision_config = VisionConfig(
            hidden_size=vision["hidden_size"],
            intermediate_size=vision["intermediate_size"],
            out_hidden_size=vision["out_hidden_size"],
            hidden_act=vision.get("hidden_act", "silu"),
            window_size=vision.get("window_size", 112),
            fullatt_block_indexes=tuple(vision.get("fullatt_block_indexes", ())),
            **common,
        )
    token_ids = {k: hf[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id") if k in hf}
    return Qwen2VLConfig(text=text_config, vision=vision_config, model_type=model_type, **token_ids)


def to_hf_dict(config: Qwen2VLConfig) -> dict[str, Any]:
    """HF ``config.json`` contents (transformers 5.x nested layout) for ``config``."""
    text, vision = config.text, config.vision
    text_dict = {
        "model_type": f"{config.model_type}_text",
        "vocab_size": text.vocab_size,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "num_hidden_layers": text.num_layers,
        "num_attention_heads": text.num_heads,
        "num_key_value_heads": text.num_kv_heads,
        "hidden_act": text.hidden_act,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": text.rope_theta,
            "mrope_section": list(text.mrope_section),
        },
    }
    vision_dict = {
        "model_type": f"{config.model_type}_vision",
        "depth": vision.depth,
        "num_heads": vision.num_heads,
        "hidden_act": vision.hidden_act,
        "in_channels": vision.in_channels,
        "patch_size": vision.patch_size,
        "temporal_patch_size": vision.temporal_patch_size,
        "spatial_merge_size": vision.spatial_merge_size,
        "rope_parameters": {"rope_type": "axial", "rope_theta": vision.rope_theta},
    }
    if config.model_type == QWEN2_VL:
        vision_dict.update(
            embed_dim=vision.hidden_size,
            mlp_ratio=vision.intermediate_size // vision.hidden_size,
            hidden_size=vision.out_hidden_size,
        )
        architecture = "Qwen2VLForConditionalGeneration"
    else:
        vision_dict.update(
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            out_hidden_size=vision.out_hidden_size,
            window_size=vision.window_size,
            fullatt_block_indexes=list(vision.fullatt_block_indexes),
        )
        architecture = "Qwen2_5_VLForConditionalGeneration"
    return {
        "architectures": [architecture],
        "model_type": config.model_type,
        "text_config": text_dict,
        "vision_config": vision_dict,
        "tie_word_embeddings": text.tie_word_embeddings,
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
    }


def load_config(checkpoint_dir: str | os.PathLike) -> Qwen2VLConfig:
    """Read and validate ``config.json`` from a HF checkpoint directory."""
    with open(os.path.join(checkpoint_dir, "config.json")) as f:
        return from_hf_dict(json.load(f))
