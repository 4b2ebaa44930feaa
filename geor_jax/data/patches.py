"""Images -> Qwen2.5-VL vision patches, in numpy (no torchvision, no torch).

Qwen2.5-VL's vision tower eats an image as a flat list of patches: the image
is cut into ``patch_size`` squares, each repeated ``temporal_patch_size`` times
(a still image is a one-frame video), and the patches are ordered so that each
``merge_size x merge_size`` block (merged into one LLM token later) is
contiguous. This module reproduces transformers' ``Qwen2VLImageProcessorPil``
layout exactly (tested to 1e-5) so checkpoints see what they were trained on.

``pixel_values`` row layout: ``(channel, temporal, patch_row, patch_col)``
flattened, i.e. ``3 * temporal_patch_size * patch_size**2`` floats per patch.
"""

import dataclasses
import math

import numpy as np
import PIL.Image

from geor_jax import config_fields

# CLIP normalisation, as in Qwen2.5-VL's preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Vision-tower patching constants (Qwen2.5-VL defaults)."""

    patch_size: int = config_fields.field(14, config_fields.at_least(1))
    temporal_patch_size: int = config_fields.field(2, config_fields.at_least(1))
    merge_size: int = config_fields.field(2, config_fields.at_least(1))
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = config_fields.field(CLIP_STD, config_fields.each(config_fields.greater_than(0)))

    def __post_init__(self):
        config_fields.check(self)

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this (one merged token's side in pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Floats per patch row of ``pixel_values``."""
        return 3 * self.temporal_patch_size * self.patch_size**2


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """The (height, width) Qwen2-VL's processor resizes an image to.

    Both sides become multiples of ``factor`` and the area is kept within
    [min_pixels, max_pixels], preserving the aspect ratio as far as possible.
    Same rule as transformers, so dynamic-resolution inference matches.
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def to_rgb_array(image) -> np.ndarray:
    """A PIL image or array as an (H, W, 3) uint8 RGB array."""
    if isinstance(image, PIL.Image.Image):
        if image.mode != "RGB":
            image = image.convert("RGB")
        return np.asarray(image, dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3]).astype(np.uint8, copy=False)


def resize(image, height: int, width: int) -> np.ndarray:
    """Resize to exactly (height, width) with PIL bicubic, as the HF processor does."""
    array = to_rgb_array(image)
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(PIL.Image.fromarray(array).resize((width, height), PIL.Image.BICUBIC))


def image_to_patches(image, config: PatchConfig = PatchConfig()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Patchify one already-resized RGB image into ``(pixel_values, grid_thw)``.

    ``image``: (H, W, 3) uint8 (or PIL) with H and W multiples of
    ``config.factor``. Returns float32 ``pixel_values`` of shape
    (grid_h * grid_w, config.patch_dim) and ``grid_thw = (1, grid_h, grid_w)``.
    """
    array = to_rgb_array(image)
    height, width = array.shape[:2]
    if height % config.factor or width % config.factor:
        raise ValueError(f"image {height}x{width} is not a multiple of {config.factor}; resize it first")
    p, m, t = config.patch_size, config.merge_size, config.temporal_patch_size
    mean = np.asarray(config.image_mean, np.float32)
    std = np.asarray(config.image_std, np.float32)
    # Same arithmetic order as the HF processor: rescale, then normalise, in float32.
    pixels = (array.astype(np.float32) * np.float32(1 / 255) - mean) / std
    pixels = pixels.transpose(2, 0, 1)  # (C, H, W)
    grid_h, grid_w = height // p, width // p
    patches = pixels.reshape(3, grid_h // m, m, p, grid_w // m, m, p)
    patches = patches.transpose(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    patches = np.broadcast_to(patches[:, :, :, :, :, None], (*patches.shape[:5], t, p, p))
    return np.ascontiguousarray(patches.reshape(grid_h * grid_w, 3 * t * p * p)), (1, grid_h, grid_w)


def num_image_tokens(grid_thw, merge_size: int = 2) -> int:
    """LLM tokens (``<|image_pad|>`` count) one image becomes: t*h*w / merge_size**2."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // merge_size**2


def choose_bucket(aspect_ratios, buckets) -> tuple[int, int]:
    """The (height, width) bucket closest in log aspect ratio to the median of ``aspect_ratios``.

    ``aspect_ratios`` are width / height of the images going into one batch; a
    whole batch shares one bucket so shapes stay static for XLA.
    """
    buckets = [tuple(int(v) for v in b) for b in buckets]
    if len(buckets) == 1:
        return buckets[0]
    target = float(np.median(np.log(np.asarray(aspect_ratios, np.float64))))
    return min(buckets, key=lambda b: abs(math.log(b[1] / b[0]) - target))
