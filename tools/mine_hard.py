"""Mine MP16-Hard: the training ids farther than R km from every sample the SFT model solves.

Inputs are CSVs: the training set (``--train``: id, lat, lon; or ``--records_dir``
for built CoR records, whose coordinates file is read, never the images) and
the SFT model's predictions on (a subset of) it
(``--predictions``: id, pred_lat, pred_lon, optionally lat/lon ground truth
or a 0/1 ``correct`` column). A prediction is correct within
``--correct_km``; correct samples are hotspots; the output lists, one per
line, the training ids more than ``--radius_km`` from every hotspot, plus a
JSON summary next to it. The training set is streamed in blocks: memory
holds the predictions and a few blocks of the training set (see
tests/test_data_hard_mining.py for the measured peak on 1M rows). The ids
become GRPO records with ``tools/build_dataset.py --from_records=... --ids=...``.

    python tools/mine_hard.py --train=train.csv --predictions=sft_preds.csv \
        --output=mp16_hard_ids.txt
    python tools/mine_hard.py --benchmark --num_train=1000000 --num_hotspots=100000
"""

import glob
import json
import os
import time

import numpy as np
from absl import app, flags

from geor_jax.data import hard_mining
from geor_jax.run import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("train", None, "CSV of the training set: id, lat, lon (aliases latitude/longitude).")
flags.DEFINE_string("records_dir", None, "Built CoR records dir: reads its <split>.coordinates*.csv (no images).")
flags.DEFINE_string("split", "train", "Split of --records_dir.")
flags.DEFINE_string("predictions", None, "CSV: id, pred_lat, pred_lon [, lat, lon | correct].")
flags.DEFINE_string("output", "mp16_hard_ids.txt", "Where to write the kept ids, one per line.")
flags.DEFINE_float("radius_km", 200.0, "Drop samples within this distance of any hotspot.")
flags.DEFINE_float("correct_km", 25.0, "A prediction this close to the truth counts as solved.")
flags.DEFINE_bool("benchmark", False, "Time the mining on synthetic data instead.")
flags.DEFINE_integer("num_train", 1_000_000, "Benchmark: training samples.")
flags.DEFINE_integer("num_hotspots", 100_000, "Benchmark: hotspots.")


def training_files(records_dir, split):
    """The coordinates files built records keep next to them (one, or one per Beam shard)."""
    paths = sorted(glob.glob(os.path.join(records_dir, f"{split}.coordinates*.csv")))
    if not paths:
        raise app.UsageError(f"{records_dir} has no {split}.coordinates*.csv (records built before it existed): "
                             "rebuild them, or pass --train with an id,lat,lon CSV")
    return paths


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
    """Stream the training set against the predictions' hotspots; write kept ids and a summary."""
    del argv
    if FLAGS.benchmark:
        benchmark(FLAGS.num_train, FLAGS.num_hotspots, FLAGS.radius_km)
        return
    if not FLAGS.predictions or not (FLAGS.train or FLAGS.records_dir):
        raise app.UsageError("need --predictions and one of --train / --records_dir")
    start = time.perf_counter()
    paths = training_files(FLAGS.records_dir, FLAGS.split) if FLAGS.records_dir else [FLAGS.train]
    predictions = hard_mining.read_predictions(FLAGS.predictions)
    partial = f"{FLAGS.output}.partial"
    with open(partial, "w", encoding="utf-8") as out:
        summary = hard_mining.mine_streaming(lambda: hard_mining.iter_id_coordinates(paths),
                                             predictions, out, FLAGS.radius_km, FLAGS.correct_km)
    os.replace(partial, FLAGS.output)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    with open(FLAGS.output + ".summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.main(main)
