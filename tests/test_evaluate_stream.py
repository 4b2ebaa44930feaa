"""Evaluation streams: each batch is scored and written as it is generated, never the split's texts at once.

The reference is the all-at-once computation main had before streaming (commit d69989e's
``evaluate_answers`` and ``write_predictions``), kept here: the streamed metrics, per-example arrays and
predictions.csv must equal it exactly, whatever the batch size.
"""

import csv
import dataclasses
import io
import os
import types

import numpy as np
import pytest

from geor_jax import evaluate, geo, regions, rewards

N = 23
CITIES = [(48.8566, 2.3522), (35.6895, 139.6917), (40.7128, -74.0060), (-33.8688, 151.2093), (-23.5505, -46.6333),
          (55.7558, 37.6173), (30.0444, 31.2357), (19.4326, -99.1332), (64.1466, -21.9426), (-1.2921, 36.8219)]


def reference_evaluate_answers(texts, true_lat, true_lon, true_regions):
    """d69989e's ``evaluate.evaluate_answers``: every answer of the split parsed and scored in one call."""
    true_lat = np.asarray(true_lat, np.float64).reshape(-1)
    true_lon = np.asarray(true_lon, np.float64).reshape(-1)
    scored = rewards.score_completions(texts, true_lat, true_lon)
    parsed, valid = scored.parsed, scored.valid
    pred_lat = np.array([p.lat if p.valid else 0.0 for p in parsed])
    pred_lon = np.array([p.lon if p.valid else 0.0 for p in parsed])
    distance = scored.distance_km.astype(np.float64)
    metrics = {k: float(v) for k, v in geo.threshold_accuracy(distance, geo.ACCURACY_THRESHOLDS_KM).items()}
    metrics["reward_mean"] = float(np.mean(scored.reward))
    metrics["geoguessr_mean"] = float(np.mean(np.where(valid, np.asarray(geo.geoguessr_score(distance)), 0.0)))
    metrics["valid_rate"] = float(valid.mean())
    metrics["count"] = len(texts)
    matches = np.array([rewards.level_matches(p, r) for p, r in zip(parsed, true_regions)], bool)
    metrics.update({f"{level}_accuracy": float(matches[:, i].mean()) for i, level in enumerate(rewards.LEVELS)})
    named = [i for i, p in enumerate(parsed) if p.valid and p.country]
    if named:
        located = regions.chain_of_region(np.stack([pred_lat[named], pred_lon[named]], axis=1))
        consistent = [rewards.level_matches(parsed[i], where)[0] for i, where in zip(named, located)]
        metrics["consistency"] = float(np.mean(consistent))
    per_example = {"distance_km": distance, "reward": scored.reward.astype(np.float64), "valid": valid,
                   "pred_lat": pred_lat, "pred_lon": pred_lon, "true_lat": true_lat, "true_lon": true_lon}
    return metrics, per_example


def reference_predictions_csv(ids, per_example) -> str:
    """d69989e's ``evaluate.write_predictions``, into a string."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "lat", "lon", "pred_lat", "pred_lon", "valid", "distance_km"])
    for i, example_id in enumerate(ids):
        writer.writerow([example_id, per_example["true_lat"][i], per_example["true_lon"][i],
                         per_example["pred_lat"][i], per_example["pred_lon"][i], int(per_example["valid"][i]),
                         per_example["distance_km"][i]])
    return out.getvalue()


def split_answers(n: int = N, seed: int = 0):
    """ids, answer texts and float64 truths of ``n`` examples: exact, near, far, wrong-country, code-named,
    unnamed and invalid answers around real cities."""
    rng = np.random.default_rng(seed)
    truth = np.array([CITIES[i % len(CITIES)] for i in range(n)]) + rng.normal(0, 0.05, (n, 2))
    places = regions.chain_of_region(truth)
    texts = []
    for i, ((lat, lon), place) in enumerate(zip(truth, places)):
        kind = i % 7
        offset = rng.normal(0, [0.0, 0.1, 5.0, 20.0, 0.5, 2.0, 0.0][kind], 2)
        guess = (float(np.clip(lat + offset[0], -90, 90)), float((lon + offset[1] + 180) % 360 - 180))
        if kind <= 2:
            texts.append(regions.render_answer(place, *guess))
        elif kind == 3:
            texts.append(f"Country: France\nState: X\nCity: Y\nCoordinates: ({guess[0]:.4f}, {guess[1]:.4f})")
        elif kind == 4:
            texts.append(f"Country: {place.country_code}\nCoordinates: ({guess[0]:.5f}, {guess[1]:.5f})")
        elif kind == 5:
            texts.append(f"Coordinates: ({guess[0]:.3f}, {guess[1]:.3f})")
        else:
            texts.append("no idea" if i % 2 else "Coordinates: (1, 2) or (3, 4)")
    return [f"img_{i:03d}.jpg" for i in range(n)], texts, truth[:, 0].copy(), truth[:, 1].copy()


@pytest.fixture(scope="module")
def reference():
    ids, texts, lat, lon = split_answers()
    metrics, per_example = reference_evaluate_answers(texts, lat, lon, regions.chain_of_region(np.stack([lat, lon], 1)))
    return ids, texts, lat, lon, metrics, per_example


def assert_same_results(metrics, per_example, expected_metrics, expected):
    assert list(metrics) == list(expected_metrics) and metrics == expected_metrics  # same keys, order, floats
    for key, value in expected.items():
        assert per_example[key].dtype == value.dtype, key
        np.testing.assert_array_equal(per_example[key], value, err_msg=key)


# 23 examples: batches of one row, a last batch of 3, a last batch of one row, the whole split in one batch.
@pytest.mark.parametrize("batch_size", [1, 4, 11, N])
def test_streamed_scores_equal_the_all_at_once_reference(tmp_path, reference, batch_size):
    ids, texts, lat, lon, expected_metrics, expected = reference
    assert 0 < expected_metrics["consistency"] < 1 and 0 < expected_metrics["valid_rate"] < 1  # every branch used
    batches = (evaluate.AnswerBatch(ids[s:s + batch_size], texts[s:s + batch_size], lat[s:s + batch_size],
                                    lon[s:s + batch_size]) for s in range(0, N, batch_size))
    path = tmp_path / "predictions.csv"
    metrics, per_example, got_ids = evaluate.score_stream(batches, str(path))
    assert_same_results(metrics, per_example, expected_metrics, expected)
    assert got_ids == ids
    assert path.read_text() == reference_predictions_csv(ids, expected)
    assert os.listdir(tmp_path) == ["predictions.csv"]  # the staging file is gone


def test_evaluate_answers_and_write_predictions_equal_the_reference(tmp_path, reference):
    ids, texts, lat, lon, expected_metrics, expected = reference
    metrics, per_example = evaluate.evaluate_answers(texts, lat, lon, regions.chain_of_region(np.stack([lat, lon], 1)))
    assert_same_results(metrics, per_example, expected_metrics, expected)
    evaluate.write_predictions(str(tmp_path / "p.csv"), ids, per_example)
    assert (tmp_path / "p.csv").read_text() == reference_predictions_csv(ids, expected)


class TrackedAnswer(str):
    """An answer string that counts how many of its kind are alive."""

    alive = 0

    def __new__(cls, text):
        TrackedAnswer.alive += 1
        return super().__new__(cls, text)

    def __del__(self):
        TrackedAnswer.alive -= 1


@dataclasses.dataclass
class FakeBatch:
    """What ``evaluate.generate_answers`` reads of a pipeline ``Batch``; ``prompts()`` is the batch itself."""

    host: dict
    arrays: dict
    texts: list

    def prompts(self):
        return self


class FakeBatches:
    """A padded evaluation iterator (``pipeline.make_iterator``) over ``split_answers``, ``batch_size`` rows."""

    def __init__(self, ids, texts, lat, lon, batch_size):
        self.num_records = self.split_size = len(ids)
        self.rows = ids, texts, lat, lon
        self.batch_size = batch_size

    def __iter__(self):
        ids, texts, lat, lon = self.rows
        for start in range(0, self.num_records, self.batch_size):
            rows = np.minimum(np.arange(start, start + self.batch_size), self.num_records - 1)  # last one repeats
            mask = (np.arange(start, start + self.batch_size) < self.num_records).astype(np.int32)
            yield FakeBatch(host={"id": np.array(ids)[rows], "lat": lat[rows], "lon": lon[rows]},
                            arrays={"lat": lat[rows].astype(np.float32), "example_mask": mask},
                            texts=[texts[i] for i in rows])


@dataclasses.dataclass(frozen=True)
class FakeData:
    num_records: int | None = None


def fake_generation(monkeypatch, reference, batch_size, decoded_alive, fail_at=None):
    """Route ``evaluate_policy`` through FakeBatches; the decoder records how many answers of earlier batches are
    alive when it decodes a batch (``decoded_alive``), and raises at batch ``fail_at``."""
    ids, texts, lat, lon = reference[:4]
    monkeypatch.setattr(evaluate.pipeline, "make_iterator",
                        lambda config, mesh: FakeBatches(ids, texts, lat, lon, batch_size))
    monkeypatch.setattr(evaluate.sampling, "sample_groups", lambda model, prompts, *args, **kwargs: prompts)

    def decode(tokenizer, batch):
        if len(decoded_alive) == fail_at:
            raise RuntimeError("decoding failed")
        decoded_alive.append(TrackedAnswer.alive)
        return [TrackedAnswer(text) for text in batch.texts]

    monkeypatch.setattr(evaluate.sampling, "decode_completions", decode)
    return types.SimpleNamespace(special_ids=types.SimpleNamespace(eos=(1,), pad=0))


def test_evaluation_holds_one_batch_of_answer_texts(tmp_path, monkeypatch, reference):
    """When a batch is decoded no answer of an earlier one is alive, and none is once evaluation returns; the
    results are still the reference's."""
    decoded_alive = []
    tokenizer = fake_generation(monkeypatch, reference, 4, decoded_alive)
    metrics, per_example, ids = evaluate.evaluate_policy(None, tokenizer, FakeData(),
                                                         evaluate.EvalConfig(batch_size=4, max_new_tokens=8))
    assert decoded_alive == [0] * 6 and TrackedAnswer.alive == 0
    assert_same_results(metrics, per_example, *reference[4:])
    assert sum(array.nbytes for array in per_example.values()) == 54 * N  # README: 54 bytes of results per image
    assert ids == reference[0]


def test_predictions_stream_to_a_url_and_appear_only_when_complete(tmp_path, monkeypatch, reference):
    """predictions.csv on a URL (``lfs://``, tests/url_scheme.py) is staged locally and uploaded once at the end;
    an evaluation that fails part-way leaves no predictions.csv."""
    import url_scheme

    monkeypatch.setenv(url_scheme.ROOT_VARIABLE, str(tmp_path))
    url_scheme._filesystem.cache_clear()
    url_scheme.LocalBackedFileSystem.clear_instance_cache()
    (tmp_path / "bucket" / "eval").mkdir(parents=True)
    url, backing = "lfs://bucket/eval/predictions.csv", tmp_path / "bucket" / "eval" / "predictions.csv"
    config = evaluate.EvalConfig(batch_size=4, max_new_tokens=8)

    tokenizer = fake_generation(monkeypatch, reference, 4, [], fail_at=3)
    with pytest.raises(RuntimeError, match="decoding failed"):
        evaluate.evaluate_policy(None, tokenizer, FakeData(), config, predictions_path=url)
    assert not backing.exists()

    tokenizer = fake_generation(monkeypatch, reference, 4, [])
    evaluate.evaluate_policy(None, tokenizer, FakeData(), config, predictions_path=url)
    assert backing.read_text() == reference_predictions_csv(reference[0], reference[5])
    assert os.listdir(backing.parent) == ["predictions.csv"]
