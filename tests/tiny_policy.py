"""A tiny random NNX Qwen2.5-VL and rollout-shaped inputs for training tests (no transformers)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geor_jax.rollout import Prompts
from geor_jax.models import qwen2_5_vl as qvl

VOCAB = 128
IMAGE_TOKEN, VISION_START, VISION_END = 120, 121, 122
GRID = (1, 4, 4)  # 16 patches -> 4 image tokens


def config(vocab_size: int = VOCAB, **token_ids) -> qvl.Qwen2VLConfig:
    """The tiny config; ``token_ids`` (image_token_id, ...) override the special ids."""
    ids = dict(image_token_id=IMAGE_TOKEN, video_token_id=123, vision_start_token_id=VISION_START,
               vision_end_token_id=VISION_END) | token_ids
    return qvl.Qwen2VLConfig(
        text=qvl.TextConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                            num_kv_heads=2, mrope_section=(1, 1, 2)),
        vision=qvl.VisionConfig(depth=1, hidden_size=16, num_heads=2, intermediate_size=32, out_hidden_size=32,
                                window_size=56, fullatt_block_indexes=(0,)),
        **ids,
    )


def model(seed: int = 0, model_config: qvl.Qwen2VLConfig | None = None, **kwargs) -> qvl.Qwen2VL:
    """A random model whose parameters are drawn with NumPy.

    Eager NNX construction compiles one XLA program per parameter shape (tens
    of seconds on a busy 2-core machine); filling an abstract model costs none.
    Matrices are scaled by fan-in so logits are O(1); vectors sit near 1
    (norm scales) or near 0 (biases).
    """
    model_config = model_config or config()
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: qvl.Qwen2VL(model_config, rngs=nnx.Rngs(0), **kwargs)))
    rng = np.random.default_rng(seed)

    def draw(path, value):
        name = str(path[-1])
        if len(value.shape) >= 2:
            input_dims = value.get_metadata("input_dims", len(value.shape) - 1)
            fan_in = value.shape[-1] if "embed_tokens" in name else int(np.prod(value.shape[:input_dims]))
            array = rng.normal(size=value.shape) / np.sqrt(fan_in)
        elif "bias" in name:
            array = 0.1 * rng.normal(size=value.shape)
        else:
            array = 1.0 + 0.1 * rng.normal(size=value.shape)
        return value.replace(jnp.asarray(array, value.dtype))

    is_param = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract, is_leaf=is_param))


def prompts(batch: int = 2, seed: int = 0, with_images: bool = True) -> Prompts:
    """Left-padded prompts of different lengths, each with one image span."""
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(batch):
        image = [VISION_START] + [IMAGE_TOKEN] * 4 + [VISION_END] if with_images else []
        rows.append(list(rng.integers(0, 100, 2 + b)) + image + list(rng.integers(0, 100, 3)))
    length = max(map(len, rows))
    tokens = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), np.int32)
    for b, row in enumerate(rows):
        tokens[b, length - len(row):], mask[b, length - len(row):] = row, 1
    if not with_images:
        return Prompts(jnp.asarray(tokens), jnp.asarray(mask), None, ())
    patch_dim = config().vision.patch_dim
    pixels = rng.normal(size=(batch * 16, patch_dim)).astype(np.float32)
    return Prompts(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(pixels), (GRID,) * batch)


def completions(rows: int, length: int = 5, seed: int = 1) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Random right-padded completions of different lengths: (tokens, mask)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 100, (rows, length)).astype(np.int32)
    lengths = rng.integers(1, length + 1, rows)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return jnp.asarray(tokens), jnp.asarray(mask)


def save_for_tokenizer(tokenizer_dir, directory, seed: int = 0, **token_ids):
    """A random tiny policy with the vocabulary and special ids of the tokenizer in ``tokenizer_dir``,
    saved as a HF checkpoint in ``directory`` (returned)."""
    from geor_jax.data import tokenizer as tokenizer_lib

    tok = tokenizer_lib.load_tokenizer(tokenizer_dir)
    ids = {k: v for k, v in tok.special_ids.model_config_overrides().items()
           if k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    qvl.save_hf_checkpoint(model(seed, model_config=config(vocab_size=tok.vocab_size, **ids | token_ids)), directory)
    return directory


def as_rows(prompts: Prompts, length: int, seed: int = 2) -> Prompts:
    """The same prompts with one image per row in ``length``-patch slots (noise in the padding, which must not
    matter): the native-resolution layout."""
    pixels = np.asarray(prompts.pixel_values)
    slots = np.random.default_rng(seed).normal(size=(len(prompts.grids), length, pixels.shape[-1])).astype(np.float32)
    start = 0
    for row, (t, h, w) in enumerate(prompts.grids):
        slots[row, : t * h * w] = pixels[start : start + t * h * w]
        start += t * h * w
    return Prompts(prompts.tokens, prompts.mask, jnp.asarray(slots), (), jnp.asarray(prompts.grids, jnp.int32))
