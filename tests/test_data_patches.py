"""Patches equal transformers' Qwen2VLImageProcessorPil output, and the pad-count rule."""

import numpy as np
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
