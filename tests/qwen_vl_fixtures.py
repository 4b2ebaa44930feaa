"""Tiny random HF Qwen2.5-VL / Qwen2-VL models, built offline, and inputs for parity tests."""

from __future__ import annotations

import functools

import numpy as np
import torch

VOCAB = 256
IMAGE_TOKEN = 250
TEXT = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
)
TOKENS = dict(image_token_id=IMAGE_TOKEN, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
# Grids chosen so Qwen2.5-VL's 56-pixel windows (2x2 merged tokens) are both
# regular (8x8) and ragged (6x10), and images differ in size.
GRID_A = (1, 8, 8)
GRID_B = (1, 6, 10)


def hf_model(variant: str, seed: int = 0):
    """A tiny random transformers model whose weights give O(1) logits."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    torch.manual_seed(seed)
    if variant == "qwen2_5_vl":
        vision = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                      window_size=56, fullatt_block_indexes=[1], patch_size=14)
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(text_config=TEXT, vision_config=vision, **TOKENS))
    else:
        vision = dict(depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=14)
        model = Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=TEXT, vision_config=vision, **TOKENS))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim >= 2:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=generator) / fan_in**0.5)
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def num_tokens(grid, merge: int = 2) -> int:
    t, h, w = grid
    return t * h * w // merge**2


def patches(grids, patch_dim: int, seed: int = 0) -> np.ndarray:
    """Random flattened patches for the given grids (what the image processor would emit)."""
    n = sum(t * h * w for t, h, w in grids)
    return np.random.RandomState(seed).randn(n, patch_dim).astype(np.float32)


def prompt(rng: np.random.RandomState, text_before: int, grids, text_after: int) -> list[int]:
    """<text> <vision_start> <image pads> <vision_end> ... <text>, one block per grid."""
    ids = list(rng.randint(0, 240, text_before))
    for grid in grids:
        ids += [TOKENS["vision_start_token_id"]] + [IMAGE_TOKEN] * num_tokens(grid) + [TOKENS["vision_end_token_id"]]
        ids += list(rng.randint(0, 240, 2))
    return ids + list(rng.randint(0, 240, text_after))


def left_pad(rows: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad token rows to a common length: (ids, attention_mask)."""
    length = max(len(r) for r in rows)
    ids = np.full((len(rows), length), pad_id, np.int64)
    mask = np.zeros((len(rows), length), np.int64)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = row
        mask[i, length - len(row):] = 1
    return ids, mask


def hf_logits(model, ids, mask=None, pixel_values=None, grids=None) -> np.ndarray:
    """transformers logits; passes mm_token_type_ids so images get 3-D positions."""
    kwargs = dict(input_ids=torch.tensor(ids))
    if mask is not None:
        kwargs["attention_mask"] = torch.tensor(mask)
    if grids:
        kwargs.update(
            pixel_values=torch.tensor(pixel_values),
            image_grid_thw=torch.tensor(grids),
            mm_token_type_ids=torch.tensor((np.asarray(ids) == IMAGE_TOKEN).astype(np.int64)),
        )
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()


def nnx_logits(model, ids, mask=None, pixel_values=None, grids=()) -> np.ndarray:
    """Logits of the NNX model under jit (one compile per input signature)."""
    import jax.numpy as jnp

    as_jnp = lambda a: None if a is None else jnp.asarray(a)
    return np.asarray(_jit_forward()(model, as_jnp(ids), as_jnp(mask), as_jnp(pixel_values), tuple(grids)))


@functools.cache
def _jit_forward():
    """The jitted forward, built on first use so importing this module does not start JAX."""
    from flax import nnx

    def forward(model, ids, mask, pixel_values, grids):
        return model(ids, mask, pixel_values=pixel_values, image_grid_thw=grids).logits

    return nnx.jit(forward, static_argnames="grids")


def hf_processor(directory):
    """transformers' Qwen2.5-VL processor (image processor + tokenizer with its chat template) of a directory.

    ``AutoProcessor`` would also build the video processor, which imports
    torchvision, and torchvision does not load beside the CPU torch here
    (DESIGN.md); this subclass leaves video out and is otherwise the stock class.
    """
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyProcessor(Qwen2_5_VLProcessor):
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    tokenizer = AutoTokenizer.from_pretrained(directory)
    return ImageOnlyProcessor(AutoImageProcessor.from_pretrained(directory), tokenizer,
                              chat_template=tokenizer.chat_template)
