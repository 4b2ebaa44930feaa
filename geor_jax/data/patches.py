"""Images -> Qwen2.5-VL vision patches, in numpy (no torchvision, no torch).

Qwen2.5-VL's vision tower eats an image as a flat list of patches: the image
is cut into ``patch_size`` squares, each repeated ``temporal_patch_size`` times
(a still image is a one-frame video), and the patches are ordered so that each
``merge_size x merge_size`` block (merged into one LLM token later) is
contiguous. This module reproduces transformers' ``Qwen2VLImageProcessorPil``
exactly (tested to 1e-5 over a corpus of sizes and modes) so checkpoints see
what they were trained on and served with: ``PatchConfig`` holds the
processor settings, read from a checkpoint's ``preprocessor_config.json``
(``load_patch_config``), and ``process_image`` sizes an image the way the
processor does (``smart_resize``: aspect ratio kept, sides multiples of
patch_size * merge_size, area within [min_pixels, max_pixels]).

Written here rather than calling transformers: its fast processor needs
torchvision (which does not load beside CPU torch here) and its slow one
works per call on lists; these are a few numpy lines.

``pixel_values`` row layout: ``(channel, temporal, patch_row, patch_col)``
flattened, i.e. ``3 * temporal_patch_size * patch_size**2`` floats per patch.
"""

import dataclasses
import json
import math
import os

import numpy as np
import PIL.Image

from geor_jax import config_fields

# CLIP normalisation, as in Qwen2.5-VL's preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_FILE = "preprocessor_config.json"
RESAMPLE_FILTERS = {int(f): f.name for f in PIL.Image.Resampling}


@dataclasses.dataclass(frozen=True)
class PatchConfig:
    """Image processor settings; the defaults are Qwen2.5-VL's documented ones.

    min_pixels / max_pixels bound an image's area after resizing (max_pixels
    caps the cost: tokens per image <= max_pixels / (patch_size * merge_size)**2);
    resample is a PIL filter id (3: bicubic).
    """

    patch_size: int = config_fields.field(14, config_fields.at_least(1))
    temporal_patch_size: int = config_fields.field(2, config_fields.at_least(1))
    merge_size: int = config_fields.field(2, config_fields.at_least(1))
    min_pixels: int = config_fields.field(56 * 56, config_fields.at_least(1))
    max_pixels: int = config_fields.field(28 * 28 * 16384, config_fields.at_least(1))
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = config_fields.field(CLIP_STD, config_fields.each(config_fields.greater_than(0)))
    resample: int = config_fields.field(int(PIL.Image.Resampling.BICUBIC), config_fields.one_of(*RESAMPLE_FILTERS))

    def __post_init__(self):
        config_fields.check(self)
        if self.max_pixels < self.factor**2 or self.min_pixels > self.max_pixels:
            raise config_fields.ConfigError(
                "PatchConfig.max_pixels", f"need {self.factor**2} <= max_pixels and min_pixels <= max_pixels, "
                f"got min_pixels={self.min_pixels} max_pixels={self.max_pixels}")

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this (one merged token's side in pixels)."""
        return self.patch_size * self.merge_size

    @property
    def patch_dim(self) -> int:
        """Floats per patch row of ``pixel_values``."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    @property
    def max_patches(self) -> int:
        """The most patches ``process_image`` gives any image (``smart_resize`` keeps h * w <= max_pixels)."""
        return self.max_pixels // self.factor**2 * self.merge_size**2


@dataclasses.dataclass(frozen=True)
class ProcessorOverrides:
    """Processor settings that replace the checkpoint's (None: keep the checkpoint's), e.g. ``max_pixels``
    to cap the tokens per image. The patch geometry is the vision tower's and is not overridden."""

    min_pixels: int | None = config_fields.field(None, config_fields.at_least(1))
    max_pixels: int | None = config_fields.field(None, config_fields.at_least(1))
    resample: int | None = config_fields.field(None, lambda v: None if v is None or v in RESAMPLE_FILTERS
                                               else f"{v!r} is not a PIL filter {RESAMPLE_FILTERS}")
    image_mean: tuple[float, float, float] | None = None
    image_std: tuple[float, float, float] | None = None

    def __post_init__(self):
        config_fields.check(self)

    def apply(self, base: PatchConfig) -> PatchConfig:
        """``base`` with the set overrides."""
        changes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        return dataclasses.replace(base, **changes) if changes else base


# Settings this module implements only at the processor's defaults: anything else would be a silent mismatch.
_FIXED_SETTINGS = {"do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True}


def load_patch_config(directory: str | os.PathLike | None, **overrides) -> PatchConfig:
    """The processor settings of a checkpoint directory's ``preprocessor_config.json``, then ``overrides``.

    Without the file (or with ``directory`` None) Qwen2.5-VL's defaults apply.
    Reads the fields of ``PatchConfig``; the pixel bounds come from
    ``size.shortest_edge`` / ``longest_edge`` or, winning as in transformers,
    top-level ``min_pixels`` / ``max_pixels``. A setting the processor would
    apply differently from this module (``do_normalize: false``, another
    ``rescale_factor``) raises ``ValueError`` naming the field and the file.
    """
    values: dict = {}
    path = os.path.join(os.fspath(directory), PREPROCESSOR_FILE) if directory else None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            try:
                raw = json.load(f)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is not valid JSON: {error}") from None
        for key, expected in _FIXED_SETTINGS.items():
            if raw.get(key, expected) is not expected:
                raise ValueError(f"{path}: {key}={raw[key]!r} is not supported (only {expected})")
        if not math.isclose(float(raw.get("rescale_factor", 1 / 255)), 1 / 255, rel_tol=1e-6):
            raise ValueError(f"{path}: rescale_factor={raw['rescale_factor']!r} is not supported (only 1/255)")
        size = raw.get("size") or {}
        values.update({name: size[key] for name, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge"))
                       if size.get(key) is not None})
        values.update({key: value for key, value in raw.items() if key in _fields() and value is not None})
    unknown = sorted(set(overrides) - set(_fields()))
    if unknown:
        raise ValueError(f"unknown image processor settings {unknown}; choose from {_fields()}")
    values.update(overrides)
    for key in ("image_mean", "image_std"):
        if key in values:
            values[key] = tuple(float(v) for v in values[key])
    try:
        return PatchConfig(**values)
    except ValueError as error:
        raise ValueError(f"{path or 'processor settings'}: {error}") from None


def _fields() -> list[str]:
    """PatchConfig's field names: the settings a preprocessor_config.json or an override may set."""
    return [f.name for f in dataclasses.fields(PatchConfig)]


def preprocessor_dict(config: PatchConfig) -> dict:
    """``config`` as a transformers ``preprocessor_config.json`` (Qwen2VLImageProcessor, Qwen2.5-VL processor)."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_resize": True, "resample": config.resample, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(config.image_mean), "image_std": list(config.image_std),
        "do_convert_rgb": True, "min_pixels": config.min_pixels, "max_pixels": config.max_pixels,
        "size": {"shortest_edge": config.min_pixels, "longest_edge": config.max_pixels},
        "patch_size": config.patch_size, "temporal_patch_size": config.temporal_patch_size,
        "merge_size": config.merge_size,
    }


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """The (height, width) Qwen2-VL's processor resizes an image to.

    Both sides become multiples of ``factor`` and the area is kept within
    [min_pixels, max_pixels], preserving the aspect ratio as far as possible.
    Same rule as transformers, so dynamic-resolution inference matches.
    """
    if min(height, width) < 1 or max(height, width) / min(height, width) > 200:
        raise ValueError(f"image {height}x{width}: sides must be >= 1 with an aspect ratio below 200")
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


def native_size(height: int, width: int, config: PatchConfig = PatchConfig()) -> tuple[int, int]:
    """``smart_resize`` with ``config``'s factor and pixel bounds: the size the processor gives the image."""
    return smart_resize(height, width, config.factor, config.min_pixels, config.max_pixels)


def to_rgb_array(image) -> np.ndarray:
    """A PIL image or uint8 array as (H, W, 3) uint8 RGB, as transformers converts it.

    Transparency (RGBA, LA, palette transparency, or a 4th array channel) is
    composited onto white; greyscale is repeated into three channels.
    """
    if isinstance(image, PIL.Image.Image):
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = PIL.Image.alpha_composite(white, image.convert("RGBA"))
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
    if array.shape[-1] == 1:
        return np.repeat(array, 3, axis=-1)
    if array.shape[-1] == 4:
        alpha = array[..., 3:] / 255
        return np.round(alpha * array[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)


def resize(image, height: int, width: int, resample: int = int(PIL.Image.Resampling.BICUBIC)) -> np.ndarray:
    """Resize to exactly (height, width) with PIL (``resample`` filter), as the HF processor does."""
    array = to_rgb_array(image)
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(PIL.Image.fromarray(array).resize((width, height), resample))


def process_image(image, config: PatchConfig = PatchConfig()) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One image as the processor sees it: RGB, resized to ``native_size``, patchified.

    Returns ``(pixel_values (t*h*w, patch_dim) float32, grid_thw)``, what
    ``Qwen2VLImageProcessorPil`` built from the same settings returns for it.
    """
    array = to_rgb_array(image)
    height, width = native_size(array.shape[0], array.shape[1], config)
    return image_to_patches(resize(array, height, width, config.resample), config)


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
