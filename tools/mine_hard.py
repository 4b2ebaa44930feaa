"""Mine MP16-Hard: the training ids farther than R km from every sample the SFT model solves.

Inputs are CSVs: the training set (``--train``: id, lat, lon; or ``--records_dir``
for built CoR records) and the SFT model's predictions on (a subset of) it
(``--predictions``: id, pred_lat, pred_lon, optionally lat/lon ground truth
or a 0/1 ``correct`` column). A prediction is correct within
``--correct_km``; correct samples are hotspots; the output lists, one per
line, the training ids more than ``--radius_km`` from every hotspot, plus a
JSON summary next to it.

    python tools/mine_hard.py --train=train.csv --predictions=sft_preds.csv \
        --output=mp16_hard_ids.txt
    python tools/mine_hard.py --benchmark --num_train=1000000 --num_hotspots=100000
"""

import csv
import json
import time

import numpy as np
from absl import app, flags

from geor_jax.data import builder, hard_mining
from geor_jax.run import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("train", None, "CSV of the training set: id, lat, lon (aliases latitude/longitude).")
flags.DEFINE_string("records_dir", None, "Built CoR records dir to read ids and coordinates from instead.")
flags.DEFINE_string("split", "train", "Split of --records_dir.")
flags.DEFINE_string("predictions", None, "CSV: id, pred_lat, pred_lon [, lat, lon | correct].")
flags.DEFINE_string("output", "mp16_hard_ids.txt", "Where to write the kept ids, one per line.")
flags.DEFINE_float("radius_km", 200.0, "Drop samples within this distance of any hotspot.")
flags.DEFINE_float("correct_km", 25.0, "A prediction this close to the truth counts as solved.")
flags.DEFINE_bool("benchmark", False, "Time the mining on synthetic data instead.")
flags.DEFINE_integer("num_train", 1_000_000, "Benchmark: training samples.")
flags.DEFINE_integer("num_hotspots", 100_000, "Benchmark: hotspots.")


def _column(header, *names):
    lowered = {h.strip().lower(): i for i, h in enumerate(header)}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def read_table(path):
    """(header, rows) of a CSV."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [row for row in reader if row]


def read_train(path):
    """ids, lat, lon arrays of a training CSV."""
    header, rows = read_table(path)
    i, la, lo = (_column(header, "id", "img_id", "image_id", "image_path"), _column(header, "lat", "latitude"),
                 _column(header, "lon", "lng", "longitude"))
    if None in (i, la, lo):
        raise ValueError(f"{path}: need id, lat and lon columns, header is {header}")
    return (np.array([r[i] for r in rows], dtype=object), np.array([float(r[la]) for r in rows]),
            np.array([float(r[lo]) for r in rows]))


def read_records(records_dir, split):
    """ids, lat, lon of built CoR records (reads each record once, images skipped)."""
    source = builder.open_records(records_dir, split)
    records = [source[i] for i in range(len(source))]
    return (np.array([r["id"].decode() for r in records], dtype=object),
            np.array([r["lat"] for r in records], np.float64), np.array([r["lon"] for r in records], np.float64))


def hotspots_from_predictions(path, ids, lat, lon, correct_km):
    """(lat, lon) of the correctly solved samples, joining ground truth by id when absent."""
    header, rows = read_table(path)
    i = _column(header, "id", "img_id", "image_id")
    flag = _column(header, "correct")
    pla, plo = _column(header, "pred_lat", "predicted_lat"), _column(header, "pred_lon", "predicted_lon")
    tla, tlo = _column(header, "lat", "latitude", "true_lat"), _column(header, "lon", "longitude", "true_lon")
    if i is None or (flag is None and None in (pla, plo)):
        raise ValueError(f"{path}: need id and pred_lat/pred_lon (or correct), header is {header}")
    index = {key: n for n, key in enumerate(ids)}
    pred_ids = [r[i] for r in rows]
    missing = [key for key in pred_ids if key not in index]
    if missing:
        raise ValueError(f"{len(missing)} predicted ids are not in the training set, e.g. {missing[:3]}")
    rows_in_train = np.array([index[key] for key in pred_ids], dtype=np.int64)
    if flag is not None:
        correct = np.array([r[flag].strip().lower() in ("1", "true", "yes") for r in rows])
    else:
        def number(text):
            try:
                return float(text)
            except ValueError:
                return float("nan")
        pred_lat = np.array([number(r[pla]) for r in rows])
        pred_lon = np.array([number(r[plo]) for r in rows])
        if tla is not None and tlo is not None:
            true_lat, true_lon = np.array([float(r[tla]) for r in rows]), np.array([float(r[tlo]) for r in rows])
        else:
            true_lat, true_lon = lat[rows_in_train], lon[rows_in_train]
        correct = hard_mining.correct_predictions(pred_lat, pred_lon, true_lat, true_lon, correct_km)
    solved = rows_in_train[correct]
    return lat[solved], lon[solved], len(rows)


def benchmark(num_train, num_hotspots, radius_km):
    """Time far_from_hotspots on clustered synthetic points (5000 "cities", hotspots in 500 of them)."""
    rng = np.random.default_rng(0)
    centres = np.stack([rng.uniform(-60, 70, 5000), rng.uniform(-180, 180, 5000)], axis=1)

    def cluster(n, num_centres):
        pick = centres[rng.integers(num_centres, size=n)]
        return np.clip(pick[:, 0] + rng.normal(0, 1.5, n), -90, 90), (pick[:, 1] + rng.normal(0, 1.5, n) + 180) % 360 - 180

    lat, lon = cluster(num_train, len(centres))
    hot_lat, hot_lon = cluster(num_hotspots, len(centres) // 10)  # solved samples crowd popular places
    start = time.perf_counter()
    keep = hard_mining.far_from_hotspots(lat, lon, hot_lat, hot_lon, radius_km)
    elapsed = time.perf_counter() - start
    print(f"mine_hard benchmark: {num_train} train x {num_hotspots} hotspots, R={radius_km} km: "
          f"{elapsed:.2f} s, kept {int(keep.sum())} ({100 * keep.mean():.1f}%)")


def main(argv):
    """Read the training set and predictions, mine, write ids and a summary."""
    del argv
    if FLAGS.benchmark:
        benchmark(FLAGS.num_train, FLAGS.num_hotspots, FLAGS.radius_km)
        return
    if not FLAGS.predictions or not (FLAGS.train or FLAGS.records_dir):
        raise app.UsageError("need --predictions and one of --train / --records_dir")
    start = time.perf_counter()
    ids, lat, lon = read_records(FLAGS.records_dir, FLAGS.split) if FLAGS.records_dir else read_train(FLAGS.train)
    hot_lat, hot_lon, num_predictions = hotspots_from_predictions(FLAGS.predictions, ids, lat, lon, FLAGS.correct_km)
    keep = hard_mining.far_from_hotspots(lat, lon, hot_lat, hot_lon, FLAGS.radius_km)
    with open(FLAGS.output, "w", encoding="utf-8") as f:
        f.writelines(f"{key}\n" for key in ids[keep])
    summary = {"train": len(ids), "predictions": num_predictions, "hotspots": len(hot_lat),
               "kept": int(keep.sum()), "radius_km": FLAGS.radius_km, "correct_km": FLAGS.correct_km,
               "seconds": round(time.perf_counter() - start, 3)}
    with open(FLAGS.output + ".summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.main(main)
