"""One image per row in patch slots (``image_rows``): the traced layout equals the static one, logits equal
transformers' for a batch of different native grids, and one compile serves every mix of grids."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geor_jax.models import qwen2_5_vl as qvl
from geor_jax.models.qwen2_5_vl import image_rows, rope, vision_layout
from compile_counter import count_compiles
from qwen_vl_fixtures import hf_logits, hf_model, left_pad, patches, prompt

TOL = 1e-4
# Regular and ragged windows (the fixture's windows are 2x2 merged units), a strip, a single unit.
GRIDS = [(1, 8, 8), (1, 6, 10), (1, 10, 4), (1, 2, 18), (1, 2, 2), (1, 14, 6)]


def _slots(grids, length, patch_dim, seed=0):
    """(B, length, patch_dim) slots holding each grid's patches first, noise after (padding must not matter)."""
    flat = patches(grids, patch_dim, seed)
    rng = np.random.RandomState(seed + 1)
    out = rng.randn(len(grids), length, patch_dim).astype(np.float32)
    start = 0
    for row, (t, h, w) in enumerate(grids):
        out[row, : t * h * w] = flat[start : start + t * h * w]
        start += t * h * w
    return out


@pytest.mark.parametrize("window_size", [56, 112])
def test_traced_layout_equals_the_static_tables(window_size):
    config = qvl.VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=64,
                              window_size=window_size, fullatt_block_indexes=(0,))
    length = max(h * w for _, h, w in GRIDS) + 8
    layout = jax.jit(image_rows.row_layout, static_argnums=(1, 2))(np.asarray(GRIDS, np.int32), length, config)
    for row, grid in enumerate(GRIDS):
        n = grid[1] * grid[2]
        static = vision_layout.vision_layout((grid,), config)
        order = np.arange(n) if static.token_order is None else static.token_order
        np.testing.assert_array_equal(np.asarray(layout.order[row, :n]), order)
        np.testing.assert_array_equal(np.asarray(layout.order[row, n:]), np.arange(n, length))
        np.testing.assert_array_equal(np.asarray(layout.positions[row, :n]), static.patch_positions)
        restore = np.arange(n // 4) if static.unit_restore is None else static.unit_restore
        np.testing.assert_array_equal(np.asarray(layout.unit_restore[row, : n // 4]), restore)
        ids = np.asarray(layout.window_id[row])
        assert (ids[n:] == -1).all() and not layout.valid[row, n:].any()
        _, sizes = np.unique(ids[:n], return_counts=True)
        window = static.window
        expected = [window.length] * window.num_segments if window.valid is None else window.valid.sum(1)
        np.testing.assert_array_equal(sorted(sizes), sorted(expected))
        assert (np.diff(ids[:n]) >= 0).all()  # windows are contiguous in window order


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen2_vl"])
def models(request, tmp_path_factory):
    hf = hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    return hf, qvl.load_hf_checkpoint(path)


@nnx.jit
def _row_logits(model, ids, mask, pixel_values, grid_thw):
    return model(ids, mask, pixel_values=pixel_values, image_grid_thw=grid_thw).logits


def test_rows_of_different_native_grids_match_transformers(models):
    hf, model = models
    grids = GRIDS[:4]
    rng = np.random.RandomState(0)
    ids, mask = left_pad([prompt(rng, 3 + i, (g,), 2 * i) for i, g in enumerate(grids)])
    slots = _slots(grids, 200, model.config.vision.patch_dim)
    got = _row_logits(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(slots), jnp.asarray(grids, jnp.int32))
    flat = np.concatenate([slots[r, : h * w] for r, (_, h, w) in enumerate(grids)])
    ref = hf_logits(hf, ids, mask, flat, grids)
    real = mask.astype(bool)
    assert float(np.max(np.abs(ref[real] - np.asarray(got)[real]))) <= TOL


def test_one_compile_for_every_mix_of_grids(models):
    _, model = models
    rng = np.random.RandomState(1)
    length, width = 200, 120
    with count_compiles(_row_logits) as compiles:
        for trial in range(3):
            grids = [GRIDS[(trial + i) % len(GRIDS)] for i in range(3)]
            ids, mask = _left_pad_to([prompt(rng, 2, (g,), 1) for g in grids], width)
            _row_logits(model, jnp.asarray(ids), jnp.asarray(mask),
                        jnp.asarray(_slots(grids, length, model.config.vision.patch_dim, trial)),
                        jnp.asarray(grids, jnp.int32)).block_until_ready()
    assert len(compiles) == 1


def _left_pad_to(rows, width):
    ids, mask = np.zeros((len(rows), width), np.int64), np.zeros((len(rows), width), np.int64)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


def test_rows_and_static_grids_give_the_same_positions():
    cfg = qvl.Qwen2VLConfig(text=qvl.TextConfig(vocab_size=256, hidden_size=64, num_layers=1, num_heads=4,
                                                 num_kv_heads=2, intermediate_size=64, mrope_section=(2, 3, 3)),
                            vision=qvl.VisionConfig(depth=1, hidden_size=32, num_heads=2, intermediate_size=48,
                                                    out_hidden_size=64, fullatt_block_indexes=(0,)),
                            image_token_id=250, video_token_id=251, vision_start_token_id=252, vision_end_token_id=253)
    rng = np.random.RandomState(2)
    grids = GRIDS[:3]
    ids, mask = left_pad([prompt(rng, 4, (g,), 3 + i) for i, g in enumerate(grids)])
    static, static_next = jax.jit(rope.mrope_positions, static_argnums=(2, 3))(ids, mask, tuple(grids), cfg)
    rows, rows_next = jax.jit(image_rows.row_mrope_positions, static_argnums=3)(ids, mask, np.asarray(grids), cfg)
    np.testing.assert_array_equal(np.asarray(static), np.asarray(rows))
    np.testing.assert_array_equal(np.asarray(static_next), np.asarray(rows_next))
