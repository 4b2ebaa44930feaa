"""KV-cache decoding, scanned layers and rematerialisation give the same logits as the plain forward."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geor_jax.models import qwen2_5_vl as qvl
from qwen_vl_fixtures import GRID_A, GRID_B, hf_model, left_pad, nnx_logits, patches, prompt

TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2_5_vl")
    hf_model("qwen2_5_vl").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def batch():
    """Two left-padded prompts with images of different sizes, plus 4 continuation tokens each."""
    grids = (GRID_A, GRID_B)
    rng = np.random.RandomState(7)
    ids, mask = left_pad([prompt(rng, 3, grids[:1], 2), prompt(rng, 6, grids[1:], 5)])
    continuation = rng.randint(0, 240, (2, 4))
    return ids, mask, continuation, grids


@nnx.jit(static_argnames="grids")
def _step(model, ids, mask, pixel_values, cache, grids):
    out = model(ids, mask, pixel_values=pixel_values, image_grid_thw=grids, cache=cache)
    return out.logits, out.cache


@pytest.mark.parametrize("scan_layers", [False, True])
def test_cache_decode_matches_full_forward(checkpoint, batch, scan_layers):
    model = qvl.load_hf_checkpoint(checkpoint, scan_layers=scan_layers)
    ids, mask, continuation, grids = batch
    pix = jnp.asarray(patches(grids, model.config.vision.patch_dim))
    full_ids = np.concatenate([ids, continuation], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(continuation)], axis=1)
    full = nnx_logits(model, full_ids, full_mask, pix, grids)

    cache = model.init_cache(batch=2, max_len=full_ids.shape[1] + 3)
    logits, cache = _step(model, jnp.asarray(ids), jnp.asarray(mask), pix, cache, grids)
    real = mask.astype(bool)
    assert np.max(np.abs(np.asarray(logits)[real] - full[:, : ids.shape[1]][real])) <= TOL
    for s in range(continuation.shape[1]):
        token = jnp.asarray(continuation[:, s : s + 1])
        logits, cache = _step(model, token, jnp.ones_like(token), None, cache, ())
        assert np.max(np.abs(np.asarray(logits)[:, 0] - full[:, ids.shape[1] + s])) <= TOL
    assert int(cache.length) == full_ids.shape[1]


def test_group_decode_from_one_prefilled_prompt(checkpoint):
    """Prefill once, repeat the cache per sample, decode different tokens per sample."""
    model = qvl.load_hf_checkpoint(checkpoint)
    grids = (GRID_A,)
    ids = np.array([prompt(np.random.RandomState(8), 4, grids, 3)])
    pix = jnp.asarray(patches(grids, model.config.vision.patch_dim))
    group = 3
    samples = np.random.RandomState(9).randint(0, 240, (group, 2))
    cache = model.init_cache(batch=1, max_len=ids.shape[1] + 2)
    _, cache = _step(model, jnp.asarray(ids), jnp.ones(ids.shape, jnp.int32), pix, cache, grids)
    cache = qvl.repeat_rows(cache, group)
    for s in range(2):
        token = jnp.asarray(samples[:, s : s + 1])
        logits, cache = _step(model, token, jnp.ones_like(token), None, cache, ())
    full_ids = np.concatenate([np.repeat(ids, group, 0), samples], axis=1)
    full = nnx_logits(model, full_ids, None, pix[None].repeat(group, 0).reshape(-1, pix.shape[-1]), grids * group)
    assert np.max(np.abs(np.asarray(logits)[:, 0] - full[:, -1])) <= TOL


def _layer1_q_grad(grads, scanned: bool) -> np.ndarray:
    layers = grads["text"]["layers"]
    if scanned:
        return np.asarray(layers["self_attn"]["q_proj"]["kernel"][...][1])
    return np.asarray(layers[1]["self_attn"]["q_proj"]["kernel"][...])


def _close(a, b) -> bool:
    return np.max(np.abs(a - b)) <= 1e-4 * max(1.0, np.max(np.abs(b)))


def _loss_and_grads(model, batch):
    ids, mask, _, grids = batch
    pix = jnp.asarray(patches(grids, model.config.vision.patch_dim))

    def loss(model):
        logits = model(jnp.asarray(ids), jnp.asarray(mask), pixel_values=pix, image_grid_thw=grids).logits
        return jnp.sum(qvl.token_logprobs(logits[:, :-1], jnp.asarray(ids[:, 1:])) * mask[:, 1:])

    return nnx.jit(nnx.value_and_grad(loss))(model)


@pytest.fixture(scope="module")
def plain_loss_and_grads(checkpoint, batch):
    return _loss_and_grads(qvl.load_hf_checkpoint(checkpoint), batch)


@pytest.mark.parametrize("options", [dict(remat=True), dict(scan_layers=True, remat=True)])
def test_scan_and_remat_match_loop_loss_and_grads(checkpoint, batch, plain_loss_and_grads, options):
    plain_value, plain_grads = plain_loss_and_grads
    value, grads = _loss_and_grads(qvl.load_hf_checkpoint(checkpoint, **options), batch)
    assert abs(float(value) - float(plain_value)) <= 1e-3
    assert _close(_layer1_q_grad(grads, options.get("scan_layers", False)), _layer1_q_grad(plain_grads, False))
    vision_grad = np.asarray(grads["vision"]["patch_embed"]["kernel"][...])
    assert _close(vision_grad, np.asarray(plain_grads["vision"]["patch_embed"]["kernel"][...]))
    assert np.max(np.abs(vision_grad)) > 0
