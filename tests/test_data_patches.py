"""Patches equal transformers' Qwen2VLImageProcessorPil output, settings come from preprocessor_config.json,
and the pad-count rule."""

import json
import zlib

import numpy as np
import PIL.Image
import pytest

from geor_jax.data import patches

hf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


def _hf_processor(**kwargs):
    return hf.Qwen2VLImageProcessorPil(**kwargs)


@pytest.mark.parametrize("height,width", [(224, 224), (112, 448), (448, 336), (56, 56)])
def test_patches_match_hf_on_resized_image(height, width):
    rng = np.random.default_rng(height * 1000 + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    pixel_values, grid = patches.image_to_patches(image)
    expected = _hf_processor()(images=[image], return_tensors="np")
    assert grid == tuple(expected["image_grid_thw"][0])
    assert pixel_values.shape == expected["pixel_values"].shape
    assert pixel_values.dtype == np.float32
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("height,width", [(300, 517), (97, 1000), (31, 40), (2000, 1500)])
def test_smart_resize_and_full_path_match_hf(height, width):
    rng = np.random.default_rng(height + width)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    max_pixels = 448 * 448
    h, w = patches.smart_resize(height, width, max_pixels=max_pixels)
    pixel_values, grid = patches.image_to_patches(patches.resize(image, h, w))
    expected = _hf_processor(max_pixels=max_pixels)(images=[image], return_tensors="np")
    assert grid == tuple(expected["image_grid_thw"][0])
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=1e-5)


def test_patch_layout_and_token_count():
    config = patches.PatchConfig()
    image = np.zeros((56, 84, 3), np.uint8)
    image[:28, :28] = 255  # the first merge block (2x2 patches) is white
    pixel_values, grid = patches.image_to_patches(image, config)
    assert grid == (1, 4, 6)
    assert pixel_values.shape == (24, config.patch_dim) == (24, 1176)
    white = pixel_values[:4]
    assert np.all(white > 1.5) and np.all(pixel_values[4:] < 0)  # merge blocks are contiguous rows
    assert patches.num_image_tokens(grid, config.merge_size) == 6


def test_rejects_unaligned_image():
    with pytest.raises(ValueError, match="multiple of 28"):
        patches.image_to_patches(np.zeros((30, 28, 3), np.uint8))


def test_choose_bucket_by_median_aspect():
    buckets = [(224, 224), (168, 336), (336, 168)]
    assert patches.choose_bucket([2.1, 1.8, 0.5], buckets) == (168, 336)
    assert patches.choose_bucket([1.0, 0.9, 1.1], buckets) == (224, 224)
    assert patches.choose_bucket([0.4], buckets) == (336, 168)
    assert patches.choose_bucket([5.0], [(448, 448)]) == (448, 448)


# Qwen2.5-VL-7B-Instruct's preprocessor_config.json values, with a smaller max_pixels so the test stays fast.
PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 200704, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
                "image_mean": list(patches.CLIP_MEAN), "image_std": list(patches.CLIP_STD),
                "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2_5_VLProcessor"}
# The transformers 5 layout: pixel bounds in "size", another resampling filter, other mean/std.
PREPROCESSOR_SIZE_DICT = {"size": {"shortest_edge": 6272, "longest_edge": 100352}, "patch_size": 14,
                          "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5, 0.5, 0.5],
                          "image_std": [0.5, 0.5, 0.5], "resample": 2, "image_processor_type": "Qwen2VLImageProcessor"}


def _image(kind: str):
    rng = np.random.default_rng(zlib.crc32(kind.encode()))
    sizes = {"landscape": (480, 640), "portrait": (640, 480), "panorama": (300, 1200), "below_min": (30, 40),
             "above_max": (768, 1024), "odd": (333, 517), "greyscale": (241, 187), "rgba": (200, 300)}
    h, w = sizes[kind]
    if kind == "greyscale":
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    if kind == "rgba":
        return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), mode="RGBA")
    return PIL.Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["min_max_pixels", "size_dict"])
def checkpoint_dir(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    settings = PREPROCESSOR if request.param == "min_max_pixels" else PREPROCESSOR_SIZE_DICT
    (path / patches.PREPROCESSOR_FILE).write_text(json.dumps(settings))
    return path


@pytest.mark.parametrize("kind", ["landscape", "portrait", "panorama", "below_min", "above_max", "odd", "greyscale",
                                  "rgba"])
def test_images_match_the_processor_of_the_same_preprocessor_config(checkpoint_dir, kind):
    from transformers import AutoImageProcessor

    config = patches.load_patch_config(checkpoint_dir)
    image = _image(kind)
    pixel_values, grid = patches.process_image(image, config)
    expected = AutoImageProcessor.from_pretrained(checkpoint_dir)(images=[image], return_tensors="np")
    assert grid == tuple(expected["image_grid_thw"][0])
    assert pixel_values.shape == expected["pixel_values"].shape and pixel_values.dtype == np.float32
    np.testing.assert_allclose(pixel_values, expected["pixel_values"], rtol=0, atol=1e-5)
    if kind == "below_min":
        assert grid[1] * grid[2] * 14 * 14 >= config.min_pixels
    if kind == "above_max":
        assert grid[1] * grid[2] * 14 * 14 <= config.max_pixels < 768 * 1024


def test_settings_are_read_from_the_file(checkpoint_dir):
    config = patches.load_patch_config(checkpoint_dir)
    if (checkpoint_dir / patches.PREPROCESSOR_FILE).read_text() == json.dumps(PREPROCESSOR):
        assert (config.min_pixels, config.max_pixels, config.resample) == (3136, 200704, 3)
    else:
        assert (config.min_pixels, config.max_pixels, config.resample, config.image_mean) == (6272, 100352, 2,
                                                                                              (0.5, 0.5, 0.5))
    assert patches.load_patch_config(checkpoint_dir, max_pixels=50176).max_pixels == 50176


def test_defaults_without_a_file_are_qwen2_5_vl(tmp_path):
    config = patches.load_patch_config(tmp_path)
    assert config == patches.PatchConfig() == patches.load_patch_config(None)
    assert (config.min_pixels, config.max_pixels, config.patch_size, config.merge_size) == (3136, 12845056, 14, 2)
    assert config.max_patches == 12845056 // 28**2 * 4


def test_exported_settings_load_back_in_transformers(tmp_path):
    from transformers import AutoImageProcessor

    config = patches.PatchConfig(max_pixels=100352, resample=2)
    (tmp_path / patches.PREPROCESSOR_FILE).write_text(json.dumps(patches.preprocessor_dict(config)))
    assert patches.load_patch_config(tmp_path) == config
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    image = _image("odd")
    np.testing.assert_allclose(patches.process_image(image, config)[0],
                               processor(images=[image], return_tensors="np")["pixel_values"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("settings,message", [
    ({"do_normalize": False}, "do_normalize=False is not supported"),
    ({"rescale_factor": 0.5}, "rescale_factor=0.5 is not supported"),
    ({"max_pixels": 100}, "max_pixels"),
    ({"resample": 9}, "resample"),
])
def test_unsupported_settings_name_the_field(tmp_path, settings, message):
    (tmp_path / patches.PREPROCESSOR_FILE).write_text(json.dumps(PREPROCESSOR | settings))
    with pytest.raises(ValueError, match=message):
        patches.load_patch_config(tmp_path)


def test_unknown_override_is_an_error():
    with pytest.raises(ValueError, match="unknown image processor settings .'max_pixel'."):
        patches.load_patch_config(None, max_pixel=1000)
