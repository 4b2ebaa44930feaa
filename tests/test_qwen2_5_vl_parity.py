"""Logit parity of the NNX Qwen2.5-VL / Qwen2-VL against transformers (fp32, max abs diff <= 1e-4)."""

import jax.numpy as jnp
import numpy as np
import pytest

from geor_jax.models import qwen2_5_vl as qvl
from qwen_vl_fixtures import GRID_A, GRID_B, hf_logits, hf_model, left_pad, nnx_logits, patches, prompt

TOL = 1e-4
VARIANTS = ["qwen2_5_vl", "qwen2_vl"]


@pytest.fixture(scope="module", params=VARIANTS)
def models(request, tmp_path_factory):
    """(transformers model, NNX model loaded from its saved, sharded checkpoint)."""
    hf = hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path, max_shard_size="200KB")
    return hf, qvl.load_hf_checkpoint(path)


def _max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def test_logits_are_not_trivial(models):
    hf, _ = models
    ids = np.array([prompt(np.random.RandomState(0), 8, (), 0)])
    assert np.std(hf_logits(hf, ids)) > 0.3  # a 1e-4 tolerance means something


def test_vision_tower_alone(models):
    hf, model = models
    import torch

    grids = (GRID_A, GRID_B)
    pix = patches(grids, model.config.vision.patch_dim)
    with torch.no_grad():
        ref = hf.model.visual(torch.tensor(pix), grid_thw=torch.tensor(grids)).pooler_output.numpy()
    got = model.vision(jnp.asarray(pix), grids)
    assert _max_diff(ref, got) <= TOL


def test_text_only(models):
    hf, model = models
    ids = np.array([prompt(np.random.RandomState(1), 20, (), 0)])
    assert _max_diff(hf_logits(hf, ids), nnx_logits(model, ids)) <= TOL


def test_one_image(models):
    hf, model = models
    grids = (GRID_A,)
    ids = np.array([prompt(np.random.RandomState(2), 5, grids, 4)])
    pix = patches(grids, model.config.vision.patch_dim)
    got = nnx_logits(model, ids, pixel_values=pix, grids=grids)
    assert _max_diff(hf_logits(hf, ids, pixel_values=pix, grids=grids), got) <= TOL


def test_two_images_of_different_sizes_in_one_sample(models):
    hf, model = models
    grids = (GRID_B, GRID_A)
    ids = np.array([prompt(np.random.RandomState(3), 3, grids, 6)])
    pix = patches(grids, model.config.vision.patch_dim)
    got = nnx_logits(model, ids, pixel_values=pix, grids=grids)
    assert _max_diff(hf_logits(hf, ids, pixel_values=pix, grids=grids), got) <= TOL


def test_left_padded_batch_with_images(models):
    hf, model = models
    grids = (GRID_A, GRID_B, GRID_A)  # sample 0: one image; sample 1: two images
    rng = np.random.RandomState(4)
    ids, mask = left_pad([prompt(rng, 2, grids[:1], 3), prompt(rng, 9, grids[1:], 12)])
    assert mask[0].sum() < mask[1].sum()
    pix = patches(grids, model.config.vision.patch_dim)
    ref = hf_logits(hf, ids, mask, pix, grids)
    got = nnx_logits(model, ids, mask, pix, grids)
    real = mask.astype(bool)
    assert _max_diff(ref[real], got[real]) <= TOL


def test_left_padded_text_batch_matches_unpadded_rows(models):
    """transformers gives text-only padded rows shifted 1-D positions; compare each row to its unpadded run."""
    hf, model = models
    rng = np.random.RandomState(5)
    rows = [prompt(rng, 7, (), 0), prompt(rng, 15, (), 0)]
    ids, mask = left_pad(rows)
    got = nnx_logits(model, ids, mask)
    for i, row in enumerate(rows):
        ref = hf_logits(hf, np.array([row]))[0]
        assert _max_diff(ref, got[i, mask[i].astype(bool)]) <= TOL


def test_token_logprobs_match_log_softmax(models):
    hf, model = models
    import torch

    ids = np.array([prompt(np.random.RandomState(6), 12, (), 0)])
    logits = hf_logits(hf, ids)
    ref = torch.log_softmax(torch.tensor(logits[:, :-1]), -1).gather(-1, torch.tensor(ids[:, 1:, None]))[..., 0].numpy()
    got = qvl.token_logprobs(jnp.asarray(nnx_logits(model, ids))[:, :-1], jnp.asarray(ids[:, 1:]))
    assert _max_diff(ref, got) <= TOL


def test_image_token_id_without_images_is_plain_text():
    import jax.numpy as jnp

    import tiny_policy
    from geor_jax.models.qwen2_5_vl import mrope_positions

    config = tiny_policy.config()
    ids = jnp.array([[0, 5, config.image_token_id, config.image_token_id, 7]])
    mask = jnp.array([[0, 1, 1, 1, 1]])
    positions, next_position = mrope_positions(ids, mask, (), config)
    np.testing.assert_array_equal(np.asarray(positions), np.tile([[[0, 0, 1, 2, 3]]], (3, 1, 1)))
    assert int(next_position[0]) == 4
