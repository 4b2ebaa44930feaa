"""grain pipeline: batch format (bucket and native sizing), image pad count, loss masks, bounded shapes, seeded
shuffle, exact resume, mesh placement."""

import dataclasses
import io
import json

import jax
import numpy as np
import PIL.Image
import pytest

from geor_jax.data import builder, demo_world, patches, pipeline, prompts
from geor_jax.data import tokenizer as tokenizer_lib
from tests import data_fixtures


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipe")
    tok = tokenizer_lib.build_demo_tokenizer(root / "tok", vocab_size=2048,
                                             texts=tokenizer_lib.demo_corpus(num_places=1500))
    records_dir, _ = demo_world.build_demo_records(str(root / "data"), num_images=22, seed=5)
    return root, tok, records_dir


def _config(setup, **overrides):
    root, _, records_dir = setup
    kwargs = dict(records_dir=records_dir, tokenizer_dir=str(root / "tok"), global_batch_size=4, resize="bucket",
                  max_prompt_len=192, max_target_len=64, seed=7)
    return pipeline.PipelineConfig(**(kwargs | overrides))


def test_batch_format_masks_and_image_pads(setup):
    _, tok, records_dir = setup
    config = _config(setup)
    batch = next(pipeline.make_iterator(config))
    a, ids = batch.arrays, tok.special_ids
    B, P, T = 4, 192, 64
    assert batch.grid_thw == (1, 16, 16)
    n_tokens = patches.num_image_tokens(batch.grid_thw)
    assert a["pixel_values"].shape == (B * 256, 1176) and a["pixel_values"].dtype == np.float32
    assert set(a) == set(pipeline.DEVICE_KEYS)
    assert a["prompt_tokens"].shape == (B, P) and a["target_tokens"].shape == (B, T)
    assert all(a[k].dtype == np.int32 for k in ("prompt_tokens", "prompt_mask", "target_tokens", "target_mask"))
    prompts_ = batch.prompts()
    assert prompts_.grids == ((1, 16, 16),) * B and prompts_.tokens is a["prompt_tokens"]
    source = builder.open_records(records_dir, "train")
    by_id = {source[i]["id"].decode(): source[i] for i in range(len(source))}
    for row in range(B):
        mask = a["prompt_mask"][row]
        first = int(np.argmax(mask))
        assert mask[first:].all() and not mask[:first].any()  # left padding
        assert (a["prompt_tokens"][row, :first] == ids.pad).all()
        prompt_ids = a["prompt_tokens"][row, first:]
        assert (prompt_ids == ids.image_pad).sum() == n_tokens == 64
        assert prompt_ids.tolist() == prompts.prompt_template(tok).ids(n_tokens)
        target = a["target_tokens"][row][a["target_mask"][row] == 1]
        record = by_id[batch.host["id"][row]]
        assert tok.decode(target) == record["answer"].decode() + "<|im_end|>"
        assert batch.host["answer"][row] == record["answer"].decode()
        # Targets are right-padded: the loss sees only the answer and its end token.
        length = int(a["target_mask"][row].sum())
        assert a["target_mask"][row, :length].all() and not a["target_mask"][row, length:].any()
        assert a["lat"][row] == pytest.approx(record["lat"], abs=1e-4)
        # Patches are this record's image.
        image = np.asarray(PIL.Image.open(io.BytesIO(record["image"])).convert("RGB"))
        expected, _ = patches.image_to_patches(patches.resize(image, 224, 224))
        np.testing.assert_array_equal(a["pixel_values"][row * 256:(row + 1) * 256], expected)
    np.testing.assert_array_equal(a["example_mask"], 1)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _same(a, b):
    for key in pipeline.DEVICE_KEYS:
        np.testing.assert_array_equal(np.asarray(a.arrays[key]), np.asarray(b.arrays[key]), err_msg=key)
    np.testing.assert_array_equal(a.host["id"], b.host["id"])


@pytest.mark.parametrize("resize", ["bucket", "native"])
def test_resume_from_saved_state_yields_the_uninterrupted_batches(setup, resize):
    # 22 records / 4 per batch: the run crosses epoch boundaries (and, native, sorting windows of 2 batches).
    config = _config(setup, resize=resize, sort_window=2)
    uninterrupted = _take(pipeline.make_iterator(config), 9)
    first = pipeline.make_iterator(config)
    _take(first, 4)
    state = first.get_state()
    assert isinstance(state, bytes) and len(state) < 4096
    resumed = pipeline.make_iterator(config, state=state)
    for expected, got in zip(uninterrupted[4:], _take(resumed, 5)):
        _same(expected, got)


@pytest.mark.parametrize("resize", ["bucket", "native"])
def test_seeded_shuffle_covers_each_record_once_per_epoch(setup, resize):
    config = _config(setup, num_epochs=1, drop_remainder=False, resize=resize, sort_window=3)
    batches = list(pipeline.make_iterator(config))
    ids = np.concatenate([b.host["id"][b.arrays["example_mask"] == 1] for b in batches])
    assert len(batches) == 6 and len(ids) == 22 and len(set(ids)) == 22
    # One padded batch (native: wherever its sorting window's shuffle put it).
    assert sorted(b.arrays["example_mask"].tolist() for b in batches)[0] == [1, 1, 0, 0]
    real_ids = lambda c: [i for b in pipeline.make_iterator(c) for i in b.host["id"][b.arrays["example_mask"] == 1]]  # noqa: E731
    assert real_ids(config) == list(ids) and real_ids(dataclasses.replace(config, seed=8)) != list(ids)


def test_buckets_follow_the_batch_aspect_ratio(setup, tmp_path):
    root, tok, _ = setup
    manual = tmp_path / "manual"
    for i, (stem, lat, lon, _) in enumerate(data_fixtures.PLACES):
        data_fixtures.write_jpeg(str(manual / f"{stem}.jpg"), i, size=(300, 140))
    with open(manual / "images.csv", "w") as f:
        f.write("image_path,lat,lon\n" + "".join(f"{s}.jpg,{la},{lo}\n" for s, la, lo, _ in data_fixtures.PLACES))
    records_dir, _ = builder.build_records("generic", str(manual), str(tmp_path / "data"))
    config = _config(setup, records_dir=records_dir, buckets=((224, 224), (168, 336)), global_batch_size=2)
    batch = next(pipeline.make_iterator(config))
    assert batch.grid_thw == (1, 12, 24)
    assert batch.arrays["pixel_values"].shape == (2 * 12 * 24, 1176)
    assert (batch.arrays["prompt_tokens"][0] == tok.special_ids.image_pad).sum() == 72
    with pytest.raises(ValueError, match=r"PipelineConfig.buckets: \(224, 200\): sides must be positive multiples .* 28"):
        _config(setup, buckets=((224, 200),))
    with pytest.raises(ValueError, match="max_prompt_len"):
        pipeline.check_prompt_lengths(_config(setup, max_prompt_len=64))


@pytest.mark.parametrize("resize", ["bucket", "native"])
def test_global_arrays_on_a_mesh(setup, resize):
    config = _config(setup, global_batch_size=8, resize=resize)
    mesh = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    host = next(pipeline.make_iterator(config))
    placed = next(pipeline.make_iterator(config, mesh=mesh))
    for key in pipeline.DEVICE_KEYS:
        array = placed.arrays[key]
        assert isinstance(array, jax.Array) and array.shape == host.arrays[key].shape
        assert array.sharding.spec[0] == ("data", "fsdp")
        np.testing.assert_array_equal(np.asarray(array), host.arrays[key])
    # Each device holds whole images: 8 examples over 8 devices -> 256 patches each (224x224 images).
    expected = {(256, 1176)} if resize == "bucket" else {(1, placed.arrays["pixel_values"].shape[1], 1176)}
    assert {s.data.shape for s in placed.arrays["pixel_values"].addressable_shards} == expected
    assert placed.grid_thw == ((1, 16, 16) if resize == "bucket" else None)


def test_exact_coordinates_reach_host_batches_and_evaluation(setup, tmp_path, monkeypatch):
    """Records hold float64 coordinates; the host batch and evaluation's truth keep them, devices get float32."""
    import csv

    from geor_jax import evaluate

    expected = data_fixtures.write_exact_collection(str(tmp_path / "manual"))
    records_dir, _ = builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"))
    config = _config(setup, records_dir=records_dir, global_batch_size=4, shuffle=False, num_epochs=1,
                     drop_remainder=False)
    batches = list(pipeline.make_iterator(config))
    (batch,) = batches
    assert batch.host["lat"].dtype == batch.host["lon"].dtype == np.float64
    assert batch.arrays["lat"].dtype == np.float32  # the reward's copy
    real = batch.arrays["example_mask"] == 1
    assert [(batch.host["lat"][i], batch.host["lon"][i]) for i in np.flatnonzero(real)] == \
        [expected[key] for key in batch.host["id"][real]]

    # Evaluation's ground truth (and so predictions.csv) is the records' float64, not the device copy.
    monkeypatch.setattr(evaluate.sampling, "sample_groups", lambda *args, **kwargs: None)
    monkeypatch.setattr(evaluate.sampling, "decode_completions", lambda tok, rollout: ["Coordinates: (0, 0)"] * 4)
    (answers,) = evaluate.generate_answers(None, setup[1], batches, max_new_tokens=8)
    assert [(lat, lon) for lat, lon in zip(answers.lat, answers.lon)] == [expected[i] for i in answers.ids]
    evaluate.score_stream([answers], str(tmp_path / "predictions.csv"))
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"]: (float(r["lat"]), float(r["lon"])) for r in rows} == expected


# Native sizing over mixed image sizes, (width, height): landscape, portrait, panorama, square, odd, tiny.
SIZES = [(320, 240), (240, 320), (250, 188), (512, 384), (400, 100), (100, 100), (333, 222), (150, 350),
         (280, 280), (90, 60), (640, 480), (77, 301)] * 2
NATIVE_PATCH = patches.PatchConfig(max_pixels=28 * 28 * 160)  # at most 640 patches per image: a fast test


@pytest.fixture(scope="module")
def sized_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("sized")
    data_fixtures.write_sized_collection(str(root / "manual"), SIZES)
    records_dir, _ = builder.build_records("generic", str(root / "manual"), str(root / "data"))
    return records_dir


def _native(setup, sized_records, **overrides):
    return _config(setup, **(dict(records_dir=sized_records, resize="native", patch=NATIVE_PATCH, num_shapes=3,
                                  sort_window=2) | overrides))


def test_native_batches_hold_each_image_as_the_processor_sizes_it(setup, sized_records):
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    _, tok, _ = setup
    config = _native(setup, sized_records, shuffle=False, num_epochs=1, drop_remainder=False)
    iterator = pipeline.make_iterator(config)
    assert len(iterator.slots) <= 3 and iterator.slots[-1] == NATIVE_PATCH.max_patches == 640
    hf = Qwen2VLImageProcessorPil(min_pixels=NATIVE_PATCH.min_pixels, max_pixels=NATIVE_PATCH.max_pixels)
    template = prompts.prompt_template(tok)
    source = builder.open_records(sized_records, "train")
    by_id = {source[i]["id"].decode(): source[i] for i in range(len(source))}
    batch = next(iterator)
    a = batch.arrays
    slot = a["pixel_values"].shape[1]
    assert batch.grid_thw is None and slot in iterator.slots and batch.prompts().row_grids is a["image_grid_thw"]
    assert a["prompt_tokens"].shape[1] == template.length(slot // 4)
    for row in range(4):
        image = PIL.Image.open(io.BytesIO(by_id[batch.host["id"][row]]["image"]))
        expected = hf(images=[image], return_tensors="np")
        np.testing.assert_array_equal(a["image_grid_thw"][row], expected["image_grid_thw"][0])
        n = len(expected["pixel_values"])
        np.testing.assert_allclose(a["pixel_values"][row, :n], expected["pixel_values"], rtol=0, atol=1e-5)
        assert not a["pixel_values"][row, n:].any()
        real = a["prompt_tokens"][row][a["prompt_mask"][row] == 1]
        assert real.tolist() == template.ids(n // 4) and a["prompt_mask"][row, -1] == 1


def test_native_shapes_are_bounded_and_sorting_pads_less(setup, sized_records):
    def epoch(sort_window):
        config = _native(setup, sized_records, num_epochs=1, drop_remainder=False, sort_window=sort_window)
        batches = list(pipeline.make_iterator(config))
        grids = {tuple(g) for b in batches for g in b.arrays["image_grid_thw"]}
        shapes = {(b.arrays["pixel_values"].shape, b.arrays["prompt_tokens"].shape) for b in batches}
        real = sum(int(np.prod(b.arrays["image_grid_thw"], axis=1).sum()) for b in batches)
        slots = sum(b.arrays["pixel_values"].shape[0] * b.arrays["pixel_values"].shape[1] for b in batches)
        return grids, shapes, 1 - real / slots

    grids, shapes, sorted_padding = epoch(sort_window=3)
    assert len(shapes) <= 3 < len(grids)
    _, _, unsorted_padding = epoch(sort_window=1)
    assert sorted_padding < unsorted_padding


def test_native_resume_inside_a_sorting_window(setup, sized_records):
    config = _native(setup, sized_records, sort_window=3)  # 24 records, windows of 12: resume mid-window
    uninterrupted = _take(pipeline.make_iterator(config), 8)
    first = pipeline.make_iterator(config)
    _take(first, 4)
    resumed = pipeline.make_iterator(config, state=first.get_state())
    for expected, got in zip(uninterrupted[4:], _take(resumed, 4)):
        _same(expected, got)


def test_preprocessor_config_of_the_checkpoint_sets_the_sizes(setup, sized_records, tmp_path):
    root, tok, _ = setup
    tok.hf.save_pretrained(tmp_path)
    (tmp_path / patches.PREPROCESSOR_FILE).write_text(json.dumps({"max_pixels": 28 * 28 * 20, "min_pixels": 3136}))
    config = _native(setup, sized_records, tokenizer_dir=str(tmp_path), patch=None, num_epochs=1,
                     drop_remainder=False)
    batches = list(pipeline.make_iterator(config))
    most = max(int(np.prod(g)) for b in batches for g in b.arrays["image_grid_thw"])
    assert most <= 80 < 560  # 20 merged tokens = 80 patches at most; 560 with the config's max_pixels


def test_pad_native_batch_widens_slots_and_left_pads_prompts(setup, sized_records):
    _, tok, _ = setup
    host = next(pipeline.make_iterator(_native(setup, sized_records))).arrays
    slot, width = host["pixel_values"].shape[1], host["prompt_tokens"].shape[1]
    wide = pipeline.pad_native_batch(host, slot + 8, width + 3, tok.special_ids.pad)
    assert wide["pixel_values"].shape[1] == slot + 8 and not wide["pixel_values"][:, slot:].any()
    np.testing.assert_array_equal(wide["prompt_tokens"][:, 3:], host["prompt_tokens"])
    assert (wide["prompt_tokens"][:, :3] == tok.special_ids.pad).all() and not wide["prompt_mask"][:, :3].any()
    np.testing.assert_array_equal(wide["target_tokens"], host["target_tokens"])
