"""TFDS ArrayRecord builder: every layout, every bad-row reason, the bad-fraction failure, resizing."""

import csv
import io
import json
import os

import PIL.Image
import pytest

from geor_jax import regions
from geor_jax.data import builder
from tests import data_fixtures


def _records(records_dir, split):
    source = builder.open_records(records_dir, split)
    return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


@pytest.mark.parametrize("layout", ["generic", "mp16_pro", "im2gps3k", "yfcc4k"])
def test_each_layout_builds_cor_records(tmp_path, layout):
    manual = tmp_path / "manual"
    ids = data_fixtures.write_layout(str(manual), layout)
    records_dir, report = builder.build_records(layout, str(manual), str(tmp_path / "data"), num_workers=2)
    split = "train" if layout in ("generic", "mp16_pro") else "test"
    assert report.written == len(ids) and report.num_bad == 0
    saved = json.load(open(os.path.join(records_dir, builder.REPORT_NAME)))
    assert saved["written"] == len(ids) and saved["split"] == split
    records = _records(records_dir, split)
    assert sorted(records) == sorted(ids)
    for image_id, (stem, lat, lon, cc) in zip(ids, data_fixtures.PLACES):
        record = records[image_id]
        assert record["country_code"].decode() == cc
        assert record["lat"] == pytest.approx(lat) and record["lon"] == pytest.approx(lon)
        answer = record["answer"].decode()
        assert answer.startswith(f"Country: {regions.country_name(cc)}\nState: ")
        parsed = regions.parse_answer(answer)
        assert parsed.valid and parsed.lat == pytest.approx(lat, abs=1e-6)
        assert parsed.city == record["city"].decode()
        image = PIL.Image.open(io.BytesIO(record["image"]))
        assert image.format == "JPEG" and image.size == (64, 48)
        place = json.loads(record["source_place"].decode())
        if layout == "mp16_pro":
            assert place["city"] == stem.title() and place["country_code"] == cc.lower()
        elif layout == "generic":
            assert place == {}
        else:
            assert place["S365_Label"] == "353"


def _write_bad_collection(root):
    """5 good rows and one row per bad reason (two unreadable: garbage and truncated)."""
    rows = []
    for i, (stem, lat, lon, _) in enumerate(data_fixtures.PLACES):
        data_fixtures.write_jpeg(os.path.join(root, f"{stem}.jpg"), i)
        rows.append([f"{stem}.jpg", lat, lon])
    with open(os.path.join(root, "garbage.jpg"), "wb") as f:
        f.write(b"this is not an image")
    data_fixtures.write_jpeg(os.path.join(root, "full.jpg"), 9, size=(200, 200))
    data = open(os.path.join(root, "full.jpg"), "rb").read()
    with open(os.path.join(root, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])
    rows += [
        ["nowhere.jpg", 10.0, 10.0],          # image_missing
        ["garbage.jpg", 11.0, 11.0],          # image_unreadable
        ["truncated.jpg", 12.0, 12.0],        # image_unreadable
        ["tokyo.jpg", "", 139.7],             # lat_lon_missing
        ["tokyo.jpg", "NaN", "nan"],          # lat_lon_missing
        ["tokyo.jpg", "35.6N", 139.7],        # lat_lon_not_numeric
        ["tokyo.jpg", 95.0, 139.7],           # lat_lon_out_of_range
        ["tokyo.jpg", 35.0, -181.0],          # lat_lon_out_of_range
        ["tokyo.jpg", 35.0, "inf"],           # lat_lon_out_of_range
        ["paris.jpg", 48.8566, 2.3522],       # duplicate_id
    ]
    with open(os.path.join(root, "images.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "lat", "lon"])
        writer.writerows(rows)


EXPECTED_BAD = {"image_missing": 1, "image_unreadable": 2, "lat_lon_missing": 2, "lat_lon_not_numeric": 1,
                "lat_lon_out_of_range": 3, "duplicate_id": 1}


def test_bad_rows_are_skipped_and_counted_per_reason(tmp_path, capsys):
    manual = tmp_path / "manual"
    manual.mkdir()
    _write_bad_collection(str(manual))
    records_dir, report = builder.build_records("generic", str(manual), str(tmp_path / "data"),
                                                max_bad_fraction=0.9, num_workers=2)
    assert report.bad == EXPECTED_BAD
    assert report.total_rows == 15 and report.written == 5
    assert "lat_lon_out_of_range: 3" in capsys.readouterr().out
    records = _records(records_dir, "train")
    assert sorted(records) == sorted(f"{p[0]}.jpg" for p in data_fixtures.PLACES)
    saved = json.load(open(os.path.join(records_dir, builder.REPORT_NAME)))
    assert saved["bad"] == EXPECTED_BAD and len(saved["examples"]["image_unreadable"]) == 2


def test_build_fails_past_bad_fraction_naming_examples(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    _write_bad_collection(str(manual))
    data_dir = tmp_path / "data"
    with pytest.raises(builder.BadRowsError) as error:
        builder.build_records("generic", str(manual), str(data_dir), max_bad_fraction=0.25, num_workers=2)
    message = str(error.value)
    for reason in EXPECTED_BAD:
        assert f"{reason}: {EXPECTED_BAD[reason]}" in message
    assert "nowhere.jpg" in message and "'35.6N'" in message
    config_dir = data_dir / "geo_cor_records" / "generic"
    assert not (config_dir / "1.0.0" / "dataset_info.json").exists()  # nothing published
    assert json.load(open(config_dir / "build_report.failed.json"))["num_bad"] == 10


def test_long_side_resize_and_missing_columns(tmp_path):
    manual = tmp_path / "manual"
    data_fixtures.write_jpeg(str(manual / "wide.jpg"), 0, size=(400, 200))
    PIL.Image.new("L", (50, 300)).save(manual / "tall.png")
    with open(manual / "images.csv", "w") as f:
        f.write("image,latitude,longitude\nwide.jpg,35.0,139.0\ntall.png,48.8,2.3\n")
    records_dir, _ = builder.build_records("generic", str(manual), str(tmp_path / "data"), max_long_side=100)
    records = _records(records_dir, "train")
    assert PIL.Image.open(io.BytesIO(records["wide.jpg"]["image"])).size == (100, 50)
    tall = PIL.Image.open(io.BytesIO(records["tall.png"]["image"]))
    assert tall.size == (17, 100) and tall.mode == "RGB" and tall.format == "JPEG"

    with open(manual / "bad_header.csv", "w") as f:
        f.write("image,where\nwide.jpg,Tokyo\n")
    with pytest.raises(ValueError, match="no latitude column"):
        builder.build_records("generic", str(manual), str(tmp_path / "data2"), csv_path="bad_header.csv")


def test_build_dataset_cli(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    tool = os.path.join(root, "tools", "build_dataset.py")
    manual = tmp_path / "manual"
    manual.mkdir()
    _write_bad_collection(str(manual))
    failed = subprocess.run([sys.executable, tool, f"--manual_dir={manual}", f"--data_dir={tmp_path / 'bad'}"],
                            cwd=root, env=env, capture_output=True, text=True)
    assert failed.returncode == 2 and "image_unreadable: 2" in failed.stderr
    ok = subprocess.run([sys.executable, tool, f"--manual_dir={manual}", f"--data_dir={tmp_path / 'ok'}",
                         "--max_bad_fraction=0.9", "--max_long_side=32"],
                        cwd=root, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "5 written" in ok.stdout and "generic_max32" in ok.stdout
