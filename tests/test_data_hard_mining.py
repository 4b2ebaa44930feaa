"""MP16-Hard mining: k-d tree result equals brute-force haversine; the CLI end to end."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from geor_jax import geo
from geor_jax.data import hard_mining

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_force_keep(lat, lon, hot_lat, hot_lon, radius_km):
    d = np.asarray(geo.haversine_km(np.asarray(lat, np.float32)[:, None], np.asarray(lon, np.float32)[:, None],
                                    np.asarray(hot_lat, np.float32)[None], np.asarray(hot_lon, np.float32)[None]))
    return (d > radius_km).all(axis=1), d.min(axis=1)


@pytest.mark.parametrize("radius_km", [50.0, 200.0, 1000.0])
def test_matches_brute_force(radius_km):
    rng = np.random.default_rng(int(radius_km))
    centres = np.stack([rng.uniform(-70, 70, 40), rng.uniform(-180, 180, 40)], axis=1)
    pick = centres[rng.integers(40, size=1500)]
    lat, lon = np.clip(pick[:, 0] + rng.normal(0, 3, 1500), -90, 90), (pick[:, 1] + rng.normal(0, 3, 1500) + 180) % 360 - 180
    hot = rng.choice(1500, 120, replace=False)
    # Hotspots include points across the antimeridian and near a pole.
    hot_lat = np.concatenate([lat[hot], [89.9, 0.0]])
    hot_lon = np.concatenate([lon[hot], [10.0, 179.99]])
    lat, lon = np.concatenate([lat, [89.0, 0.0, 0.0]]), np.concatenate([lon, [-170.0, -179.99, -178.0]])
    keep = hard_mining.far_from_hotspots(lat, lon, hot_lat, hot_lon, radius_km)
    expected, nearest = _brute_force_keep(lat, lon, hot_lat, hot_lon, radius_km)
    clear = np.abs(nearest - radius_km) > 0.5  # float32 brute force is only exact away from the boundary
    np.testing.assert_array_equal(keep[clear], expected[clear])
    assert not keep[hot].any()  # a hotspot is within R of itself
    assert keep[-3] == (radius_km < 111) and not keep[-2]  # pole and antimeridian neighbours


def test_no_hotspots_keeps_everything_and_correct_predictions():
    assert hard_mining.far_from_hotspots([1.0, 2.0], [3.0, 4.0], [], []).all()
    correct = hard_mining.correct_predictions([35.7, 35.7, np.nan], [139.7, 140.5, 0.0], [35.69] * 3, [139.69] * 3, 25)
    np.testing.assert_array_equal(correct, [True, False, False])


def test_cli_writes_kept_ids(tmp_path):
    train = [("tokyo", 35.6895, 139.6917), ("yokohama", 35.4437, 139.6380), ("osaka", 34.6937, 135.5023),
             ("paris", 48.8566, 2.3522), ("lyon", 45.7640, 4.8357), ("sydney", -33.8688, 151.2093)]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "lat", "lon"), *train])
    with open(tmp_path / "preds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "pred_lat", "pred_lon"), ("tokyo", 35.70, 139.70),  # solved -> hotspot
                                 ("paris", 40.0, -3.7), ("sydney", "", "")])               # wrong, unparsable
    out = tmp_path / "hard.txt"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "mine_hard.py"), f"--train={tmp_path / 'train.csv'}",
                    f"--predictions={tmp_path / 'preds.csv'}", f"--output={out}"],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    assert out.read_text().split() == ["osaka", "paris", "lyon", "sydney"]  # Tokyo, Yokohama within 200 km
    summary = json.load(open(f"{out}.summary.json"))
    assert summary["hotspots"] == 1 and summary["kept"] == 4


def test_cli_reads_exact_coordinates_from_records(tmp_path):
    """A prediction equal to the truth read from records solves it even at a 1 mm tolerance (float32: ~0.2 m off)."""
    from geor_jax.data import builder
    from tests import data_fixtures

    data_fixtures.write_exact_collection(str(tmp_path / "manual"))
    records_dir, _ = builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"))
    name, lat, lon = data_fixtures.EXACT[0]
    with open(tmp_path / "preds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "pred_lat", "pred_lon"), (name, lat, lon)])
    out = tmp_path / "hard.txt"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "mine_hard.py"), f"--records_dir={records_dir}",
                    f"--predictions={tmp_path / 'preds.csv'}", f"--output={out}", "--correct_km=1e-6",
                    "--radius_km=1"], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    assert sorted(out.read_text().split()) == [n for n, _, _ in data_fixtures.EXACT[1:]]


_MINE_IN_CHILD = """
import io, json, sys, threading, time
import psutil, pyarrow.compute, pyarrow.csv, scipy.spatial  # imported first: their code is not working memory
from geor_jax.data import hard_mining
train, preds = sys.argv[1:3]
process, peak, done = psutil.Process(), [0], threading.Event()
def sample():  # the resident set every 5 ms: the peak of the working set, arrow's buffers included
    while not done.is_set():
        peak[0] = max(peak[0], process.memory_info().rss)
        time.sleep(0.005)
before = process.memory_info().rss
sampler = threading.Thread(target=sample)
sampler.start()
predictions = hard_mining.read_predictions(preds)
with open(sys.argv[3], "w") as out:
    summary = hard_mining.mine_streaming(lambda: hard_mining.iter_id_coordinates([train]), predictions, out)
done.set()
sampler.join()
print(json.dumps(summary | {"peak_growth_mib": (max(peak[0], process.memory_info().rss) - before) / 2**20}))
"""


def _mine_in_child(tmp_path, n, m=20_000):
    """Mine n generated training rows against m predictions in a fresh process; (summary, expected kept ids)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pv

    rng = np.random.default_rng(n)
    lat, lon = rng.uniform(-60, 70, n), rng.uniform(-180, 180, n)
    train, preds, kept = tmp_path / f"train{n}.csv", tmp_path / f"preds{n}.csv", tmp_path / f"kept{n}.txt"
    ids = pc.binary_join_element_wise("mp16/", pc.cast(pa.array(np.arange(n)), pa.string()), ".jpg", "")
    pv.write_csv(pa.table({"id": ids, "lat": lat, "lon": lon}), train)  # written in C: ~1 s for 1M rows
    asked = rng.choice(n, m, replace=False)
    solved = asked[: m // 2]
    pred_lon = np.where(np.isin(asked, solved), lon[asked], (lon[asked] + 360) % 360 - 180)  # half: far away
    pv.write_csv(pa.table({"id": ids.take(asked), "lat": lat[asked], "lon": lon[asked], "pred_lat": lat[asked],
                           "pred_lon": pred_lon}), preds)
    result = subprocess.run([sys.executable, "-c", _MINE_IN_CHILD, str(train), str(preds), str(kept)], check=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    summary = json.loads(result.stdout.splitlines()[-1])
    keep = hard_mining.far_from_hotspots(lat, lon, lat[solved], lon[solved])
    assert kept.read_text().split() == [f"mp16/{i}.jpg" for i in np.flatnonzero(keep)]
    assert summary["train"] == n and summary["hotspots"] == m // 2 and summary["kept"] == int(keep.sum())
    return summary["peak_growth_mib"]


def test_mining_streams_a_million_rows_in_bounded_memory(tmp_path):
    """1M training rows, 20k predictions: peak memory grows as much as for 100k rows, a few tens of MiB."""
    small, large = _mine_in_child(tmp_path, 100_000), _mine_in_child(tmp_path, 1_000_000)
    print(f"mining x 20k predictions: peak resident memory grew {small:.1f} MiB for 100k rows, "
          f"{large:.1f} MiB for 1M rows")
    # Held whole, the 1M rows take ~200 MB as Python objects (the old reader) and 33 MB as CSV text.
    assert large < 96 and large - small < 24, (small, large)


def test_records_dir_mining_reads_the_coordinates_file_not_the_records(tmp_path):
    from geor_jax.data import builder
    from tests import data_fixtures

    data_fixtures.write_exact_collection(str(tmp_path / "manual"))
    records_dir, _ = builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"), num_workers=0)
    for name in os.listdir(records_dir):
        if ".array_record" in name:
            os.remove(os.path.join(records_dir, name))  # no image can be read now
    name, lat, lon = data_fixtures.EXACT[0]
    with open(tmp_path / "preds.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id", "correct"), (name, 1)])  # a correct flag: truth joined from the records
    out = tmp_path / "hard.txt"
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "mine_hard.py"), f"--records_dir={records_dir}",
                    f"--predictions={tmp_path / 'preds.csv'}", f"--output={out}", "--radius_km=1"],
                   check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True)
    assert sorted(out.read_text().split()) == [n for n, _, _ in data_fixtures.EXACT[1:]]
    assert json.load(open(f"{out}.summary.json"))["hotspots"] == 1


def test_mp16_hard_records_from_the_mined_ids(tmp_path):
    """The documented command: filter built MP16-Pro records by mine_hard.py's id list into mp16_hard/1.1.0."""
    from geor_jax.data import builder
    from tests import data_fixtures

    manual = tmp_path / "manual"
    ids, _ = data_fixtures.write_layout(str(manual), "mp16_pro", "chunks")
    data_dir = tmp_path / "records"
    source_dir, _ = builder.build_records("mp16_pro", str(manual), str(data_dir), num_workers=0)
    hard = ids[1:4]
    (tmp_path / "mp16_hard_ids.txt").write_text("\n".join(hard + ["not/in/mp16.jpg"]) + "\n")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "build_dataset.py"),
                             f"--from_records={source_dir}", f"--ids={tmp_path / 'mp16_hard_ids.txt'}",
                             "--config_name=mp16_hard", f"--data_dir={data_dir}"],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "id list: 4 ids, 2 rows not on it, 1 listed ids not in the collection" in result.stdout
    hard_dir = os.path.join(data_dir, "geo_cor_records", "mp16_hard", "1.1.0")  # what configs/geor_*_grpo.py read
    source, filtered = builder.open_records(source_dir, "train"), builder.open_records(hard_dir, "train")
    by_id = {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}
    got = {r["id"].decode(): r for r in (filtered[i] for i in range(len(filtered)))}
    assert sorted(got) == sorted(hard)
    for key, record in got.items():
        assert all(np.array_equal(record[f], by_id[key][f]) for f in record), key
    report = json.load(open(os.path.join(hard_dir, builder.REPORT_NAME)))
    assert (report["written"], report["ids_requested"], report["ids_not_found"]) == (3, 4, 1)

    # The other way: build straight from the download with the id list; the same examples.
    direct_dir, direct = builder.build_records("mp16_pro", str(manual), str(tmp_path / "direct"),
                                               config_name="mp16_hard", ids_path=str(tmp_path / "mp16_hard_ids.txt"),
                                               num_workers=0)
    direct_records = builder.open_records(direct_dir, "train")
    assert {r["id"].decode(): r["image"] for r in (direct_records[i] for i in range(3))} == \
        {k: r["image"] for k, r in got.items()}
    assert (direct.written, direct.not_selected, direct.ids_not_found) == (3, 2, 1)
