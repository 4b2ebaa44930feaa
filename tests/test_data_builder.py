"""TFDS ArrayRecord builder: every layout, the header check, every bad-row reason, the bad-rows failures, strict
numbers, duplicate ids, exact coordinates, resizing, the CLI."""

import csv
import io
import json
import os

import numpy as np
import PIL.Image
import pytest

from geor_jax import regions
from geor_jax.data import builder, layouts, rows
from tests import data_fixtures


def _records(records_dir, split):
    source = builder.open_records(records_dir, split)
    return {r["id"].decode(): r for r in (source[i] for i in range(len(source)))}


LAYOUT_CASES = [  # (layout, where its images are, metadata CSV name)
    ("generic", "folder", None), ("generic", "tars", None), ("generic", "zip", None),
    ("mp16_pro", "folder", None), ("mp16_pro", "tar", "MP16_Pro_filtered.csv"), ("mp16_pro", "chunks", None),
    ("mp16_pro", "chunks+index", "metadata/MP16_Pro_filtered.csv"),
    ("im2gps3k", "folder", None), ("im2gps3k", "zip", None),
    ("yfcc4k", "folder", None), ("yfcc4k", "zip", "yfcc25600_places365.csv"),
    ("yfcc26k", "folder", None), ("geoclip", "folder", None), ("geoclip", "chunks", None),
]


@pytest.mark.parametrize("layout, storage, csv_name", LAYOUT_CASES)
def test_each_layout_builds_cor_records(tmp_path, layout, storage, csv_name):
    manual = tmp_path / "manual"
    ids, extra = data_fixtures.write_layout(str(manual), layout, storage, csv_name)
    records_dir, report = builder.build_records(layout, str(manual), str(tmp_path / "data"), num_workers=2, **extra)
    split = "train" if layout in ("generic", "mp16_pro", "geoclip") else "test"
    assert report.written == len(ids) and report.num_bad == 0
    saved = json.load(open(os.path.join(records_dir, builder.REPORT_NAME)))
    assert saved["written"] == len(ids) and saved["split"] == split
    records = _records(records_dir, split)
    assert sorted(records) == sorted(ids)
    for i, (image_id, (stem, lat, lon, cc)) in enumerate(zip(ids, data_fixtures.PLACES)):
        record = records[image_id]
        assert record["country_code"].decode() == cc
        assert record["lat"] == pytest.approx(lat) and record["lon"] == pytest.approx(lon)
        answer = record["answer"].decode()
        assert answer.startswith(f"Country: {regions.country_name(cc)}\nState: ")
        parsed = regions.parse_answer(answer)
        assert parsed.valid and parsed.lat == pytest.approx(lat, abs=1e-6)
        assert parsed.city == record["city"].decode()
        assert record["image"] == data_fixtures.jpeg_bytes(i)  # the very bytes, read in place from the archive
        place = json.loads(record["source_place"].decode())
        if layout == "mp16_pro":
            assert place["city"] == stem.title() and place["country_code"] == cc.lower()
        elif layout in ("generic", "geoclip"):
            assert place == {}
        else:
            assert place["S365_Label"] == "353"
    if storage != "folder":  # nothing was extracted: no image file exists outside the archives
        assert not [p for p in tmp_path.rglob("*") if p.suffix == ".jpg"]


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
        ["tokyo.jpg", 35.0, "inf"],           # lat_lon_not_numeric (no "inf" text)
        ["paris.jpg", 48.8566, 2.3522],       # duplicate_id
    ]
    with open(os.path.join(root, "images.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "lat", "lon"])
        writer.writerows(rows)


EXPECTED_BAD = {"image_missing": 1, "image_unreadable": 2, "lat_lon_missing": 2, "lat_lon_not_numeric": 2,
                "lat_lon_out_of_range": 2, "duplicate_id": 1, "text_undecodable": 0}


def test_bad_rows_are_skipped_and_counted_per_reason(tmp_path, capsys):
    manual = tmp_path / "manual"
    manual.mkdir()
    _write_bad_collection(str(manual))
    records_dir, report = builder.build_records("generic", str(manual), str(tmp_path / "data"),
                                                max_bad_fraction=0.9, max_missing_fraction=0.5, num_workers=2)
    assert report.bad == EXPECTED_BAD
    assert report.total_rows == 15 and report.written == 5
    assert "lat_lon_out_of_range: 2" in capsys.readouterr().out
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
        builder.build_records("generic", str(manual), str(data_dir), max_bad_fraction=0.25, max_missing_fraction=0.5,
                              num_workers=2)
    assert str(error.value).startswith("too many bad rows: 9 of 15 malformed") and "\n" not in str(error.value)
    assert "missing images" not in str(error.value)  # 1 of 15 without an image is within its own limit
    summary = error.value.report.summary()
    for reason, count in EXPECTED_BAD.items():
        if count:
            assert f"{reason}: {count}" in summary
    assert "nowhere.jpg" in summary and "'35.6N'" in summary
    config_dir = data_dir / "geo_cor_records" / "generic"
    assert not (config_dir / str(builder.GeoCorRecords.VERSION) / "dataset_info.json").exists()  # nothing published
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
    with pytest.raises(layouts.LayoutError, match="missing lat, lon"):
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
    assert failed.returncode == 2 and "image_unreadable: 2" in failed.stdout  # the report
    assert [line for line in failed.stderr.splitlines() if line.startswith("build failed: too many bad rows")]
    ok = subprocess.run([sys.executable, tool, f"--manual_dir={manual}", f"--data_dir={tmp_path / 'ok'}",
                         "--max_bad_fraction=0.9", "--max_missing_fraction=0.1", "--max_long_side=32"],
                        cwd=root, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "5 written" in ok.stdout and "generic_max32" in ok.stdout


def _write_csv_bytes(root, data: bytes, images=()):
    """images.csv with exactly ``data`` plus a good JPEG per name in ``images``."""
    root.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(images):
        data_fixtures.write_jpeg(str(root / name), i)
    (root / "images.csv").write_bytes(data)


@pytest.mark.parametrize("data, hint", [
    (b"image_path;lat;lon\ntokyo.jpg;35.6;139.7\n", "';'-separated"),
    (b"image_path\tlat\tlon\ntokyo.jpg\t35.6\t139.7\n", "'\\t'-separated"),
    (b"image,where\ntokyo.jpg,Tokyo\n", "missing lat, lon"),
])
def test_header_is_checked_before_the_build(tmp_path, data, hint):
    _write_csv_bytes(tmp_path / "manual", data, ["tokyo.jpg"])
    with pytest.raises(layouts.LayoutError) as error:
        builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"))
    message = str(error.value)
    assert "\n" not in message and hint in message and "images.csv" in message
    header = data.split(b"\n")[0].decode()
    assert repr(header.split(",")) in message  # the columns found, as read
    # Which columns each layout needs.
    assert "generic needs image (image_path|image|" in message and "lat (lat|latitude)" in message
    assert "mp16_pro needs image (IMG_ID), lat (LAT), lon (LON)" in message
    assert not (tmp_path / "data").exists()  # TFDS never started


def test_header_error_names_the_layouts_that_fit(tmp_path):
    _write_csv_bytes(tmp_path / "manual", b"image_path,lat,lon\ntokyo.jpg,35.6,139.7\n", ["tokyo.jpg"])
    with pytest.raises(layouts.LayoutError, match=r"fits layout\(s\) \['generic'\]") as error:
        builder.build_records("im2gps3k", str(tmp_path / "manual"), str(tmp_path / "data"), csv_path="images.csv")
    assert "does not fit layout im2gps3k: missing image;" in str(error.value)


def test_empty_csv_is_a_header_error(tmp_path):
    _write_csv_bytes(tmp_path / "manual", b"")
    with pytest.raises(layouts.LayoutError, match="images.csv: no header line"):
        builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"))
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("data", [b"image_path,lat,lon\n", b"image_path,lat,lon\r\n\r\n",
                                  b"image_path,lat,lon\nnowhere.jpg,35.6,139.7\ntokyo.jpg,95,0\n"])
def test_no_rows_written_is_a_bad_rows_error(tmp_path, data):
    _write_csv_bytes(tmp_path / "manual", data, ["tokyo.jpg"])
    data_dir = tmp_path / "data"
    with pytest.raises(builder.BadRowsError, match="no rows written") as error:
        builder.build_records("generic", str(tmp_path / "manual"), str(data_dir), max_bad_fraction=1.0)
    assert "\n" not in str(error.value)
    config_dir = data_dir / "geo_cor_records" / "generic"
    assert not (config_dir / str(builder.GeoCorRecords.VERSION) / "dataset_info.json").exists()
    saved = json.load(open(config_dir / "build_report.failed.json"))
    assert saved["written"] == 0 and saved["total_rows"] == data.count(b".jpg")


def test_undecodable_bytes_skip_the_row_under_their_own_reason(tmp_path):
    data = (b"image_path,lat,lon\ntokyo.jpg,35.6895,139.6917\ncaf\xe9.jpg,48.8566,2.3522\n"
            b"paris.jpg,48.8566,2.3\xff\nparis.jpg,48.8566,2.3522\n")
    _write_csv_bytes(tmp_path / "manual", data, ["tokyo.jpg", "paris.jpg"])
    records_dir, report = builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"),
                                                max_bad_fraction=0.5)
    assert report.bad["text_undecodable"] == 2 and report.num_bad == 2
    assert report.total_rows == 4 and report.written == 2
    first, second = report.examples["text_undecodable"]
    assert first.startswith("row 2 ") and "0xe9" in first and "image_path" in first
    assert second.startswith("row 3 ") and "0xff" in second and "lon" in second
    assert sorted(_records(records_dir, "train")) == ["paris.jpg", "tokyo.jpg"]
    json.dumps(report.to_dict())  # the report stays JSON-safe


@pytest.mark.parametrize("text", ["3_5", "1_000.5", "٣٥", "３５", "0x1A", "0x1p3", "inf", "-Infinity", "nan(1)",
                                  "1e", "e5", ".", "+-1", "1.2.3", "35.6N", "1,5", "− 5", "1 5"])
def test_numbers_parse_strictly(text):
    assert rows.parse_coordinates(text, "10")[0] == "lat_lon_not_numeric"
    assert rows.parse_coordinates("10", text)[0] == "lat_lon_not_numeric"


@pytest.mark.parametrize("text, value", [("35", 35.0), ("-35.5", -35.5), ("+35.5", 35.5), (".5", 0.5), ("5.", 5.0),
                                         ("3.5e1", 35.0), ("35E-1", 3.5), (" 12.25 ", 12.25), ("-0", 0.0)])
def test_plain_decimal_and_exponent_numbers_parse(text, value):
    assert rows.parse_coordinates(text, text) == (value, value)


def test_overflowing_number_is_out_of_range_and_nan_is_missing():
    assert rows.parse_coordinates("1e999", "0")[0] == "lat_lon_out_of_range"
    assert rows.parse_coordinates("NaN", "0")[0] == "lat_lon_missing"


@pytest.mark.parametrize("chunk_size", [1, 2048])
def test_first_readable_copy_of_an_id_wins(tmp_path, chunk_size):
    manual = tmp_path / "manual"
    for i, name in enumerate(["first_good.jpg", "second_good.jpg", "other.jpg"]):
        data_fixtures.write_jpeg(str(manual / name), i)
    (manual / "broken.jpg").write_bytes(b"not an image")
    (manual / "images.csv").write_text(
        "id,image_path,lat,lon\n"
        "x,broken.jpg,35.6895,139.6917\n"       # unreadable: does not claim the id
        "y,other.jpg,48.8566,2.3522\n"
        "x,first_good.jpg,35.6895,139.6917\n"   # the first readable copy of x wins
        "x,second_good.jpg,35.6895,139.6917\n"  # duplicate
        "y,broken.jpg,48.8566,2.3522\n")        # duplicate of a written id (never read)
    records_dir, report = builder.build_records("generic", str(manual), str(tmp_path / "data"), max_bad_fraction=0.9,
                                                chunk_size=chunk_size, num_workers=2)
    assert report.written == 2 and report.bad["image_unreadable"] == 1 and report.bad["duplicate_id"] == 2
    assert report.examples["image_unreadable"][0].startswith("row 1 ")
    assert [e.split(" ")[1] for e in report.examples["duplicate_id"]] == ["4", "5"]
    records = _records(records_dir, "train")
    assert records["x"]["image"] == (manual / "first_good.jpg").read_bytes()
    assert records["y"]["image"] == (manual / "other.jpg").read_bytes()


def test_coordinates_are_stored_exactly_as_read(tmp_path):
    expected = data_fixtures.write_exact_collection(str(tmp_path / "manual"))
    records_dir, _ = builder.build_records("generic", str(tmp_path / "manual"), str(tmp_path / "data"))
    records = _records(records_dir, "train")
    for name, (lat, lon) in expected.items():
        assert np.asarray(records[name]["lat"]).dtype == np.float64
        assert float(records[name]["lat"]) == lat and float(records[name]["lon"]) == lon


@pytest.mark.parametrize("data", [b"image_path;lat;lon\na.jpg;1;2\n", b"image_path,lat,lon\n"])
def test_build_dataset_cli_prints_one_line_for_bad_input(tmp_path, data):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _write_csv_bytes(tmp_path / "manual", data)
    result = subprocess.run([sys.executable, os.path.join(root, "tools", "build_dataset.py"),
                             f"--manual_dir={tmp_path / 'manual'}", f"--data_dir={tmp_path / 'data'}"],
                            cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("build failed:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr


def _im2gps3k_rows(manual, header, count=40):
    """An IM2GPS3K CSV of ``count`` world-spread places (every image present), ``LAT,LON`` or ``LON,LAT`` named."""
    rng = np.random.default_rng(0)
    lat, lon = rng.uniform(-60, 70, count).tolist(), rng.uniform(-179, 179, count).tolist()
    lon[:2] = [139.7, -74.0]  # some |lon| > 90 for sure
    manual.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(count):
        name = f"{i}.jpg"
        data_fixtures.write_jpeg(str(manual / "im2gps3k_rgb_images" / name), i, size=(16, 16))
        rows.append(f"{name},author,{lat[i]!r},{lon[i]!r},1,2,3,0.1,0.2,0.7")
    (manual / "im2gps3k_places365.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return dict(zip((f"{i}.jpg" for i in range(count)), zip(lat, lon)))


def test_swapped_lat_lon_header_is_named_and_the_column_flags_fix_it(tmp_path):
    """An older im2gps3k_places365.csv labels its columns LON,LAT over latitude-first values."""
    manual = tmp_path / "manual"
    truth = _im2gps3k_rows(manual, "IMG_ID,AUTHOR,LON,LAT,S3_Label,S16_Label,S365_Label,Prob_indoor,Prob_natural,"
                                   "Prob_urban")
    with pytest.raises(builder.BadRowsError) as error:
        builder.build_records("im2gps3k", str(manual), str(tmp_path / "data"), max_bad_fraction=1.0, num_workers=0)
    message = str(error.value)
    assert message.startswith("latitude and longitude look swapped") and "\n" not in message
    assert "--lat_column=LON --lon_column=LAT" in message
    records_dir, report = builder.build_records("im2gps3k", str(manual), str(tmp_path / "data"),
                                                lat_column="LON", lon_column="LAT", num_workers=0)
    assert report.written == len(truth) and report.num_bad == 0
    records = _records(records_dir, "test")
    for name, (lat, lon) in truth.items():
        assert float(records[name]["lat"]) == lat and float(records[name]["lon"]) == lon


def test_a_correct_header_with_a_few_bad_latitudes_is_not_called_swapped(tmp_path):
    manual = tmp_path / "manual"
    _im2gps3k_rows(manual, ",".join(data_fixtures.PLACES365_HEADER))
    csv_path = manual / "im2gps3k_places365.csv"
    lines = csv_path.read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split(",")[2], "95.5", 1)
    csv_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(builder.BadRowsError, match="^too many bad rows: 1 of 40 malformed"):
        builder.build_records("im2gps3k", str(manual), str(tmp_path / "data"))


def test_missing_images_have_their_own_limit(tmp_path):
    """MP16-Pro lists ~11% more rows than it ships images: within mp16_pro's limit (15%), past a 1% one."""
    manual = tmp_path / "manual"
    members = {f"mp-16-images/{i:02x}_a_{i}.jpg": data_fixtures.jpeg_bytes(i, (16, 16)) for i in range(89)}
    data_fixtures.write_tar(str(manual / "mp-16-images.tar"), members)
    refs = [f"{i:02x}/a/{i}.jpg" for i in range(100)]  # the last 11 have no image in the tar
    with open(manual / "MP16_Pro_filtered.csv", "w") as f:
        f.write("IMG_ID,LAT,LON\n" + "".join(f"{ref},35.0,139.0\n" for ref in refs))
    _, report = builder.build_records("mp16_pro", str(manual), str(tmp_path / "data"), num_workers=0)
    assert report.written == 89 and report.bad["image_missing"] == 11 and report.num_malformed == 0
    assert report.examples["image_missing"][0].startswith("row 90 (id '59/a/89.jpg'): no image for '59/a/89.jpg'")
    with pytest.raises(builder.BadRowsError) as error:
        builder.build_records("mp16_pro", str(manual), str(tmp_path / "strict"), max_missing_fraction=0.01)
    assert str(error.value).startswith("too many missing images: 11 of 100 rows have no image (11.00% > limit 1.00%")
    assert "bad rows" not in str(error.value)  # missing images are not malformed rows


def test_missing_metadata_csv_is_one_line_naming_every_name_looked_for(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    data_fixtures.write_zip(str(tmp_path / "yfcc4k.zip"), {"yfcc4k/1.jpg": data_fixtures.jpeg_bytes(0)})
    result = subprocess.run([sys.executable, os.path.join(root, "tools", "build_dataset.py"), "--layout=yfcc4k",
                             f"--manual_dir={tmp_path}", f"--data_dir={tmp_path / 'data'}"],
                            cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("build failed:")]
    assert "no yfcc4k metadata CSV" in line
    assert "'yfcc4k_places365.csv', 'yfcc25600_places365.csv'" in line


def test_generic_csv_with_column_mapping(tmp_path):
    manual = tmp_path / "manual"
    for i, (stem, _, _, _) in enumerate(data_fixtures.PLACES):
        data_fixtures.write_jpeg(str(manual / "pics" / f"{stem}.jpg"), i)
    (manual / "photos.csv").write_text("key,picture,y,x\n" + "".join(
        f"k{i},pics/{stem}.jpg,{lat},{lon}\n" for i, (stem, lat, lon, _) in enumerate(data_fixtures.PLACES)))
    with pytest.raises(layouts.LayoutError, match="missing image, lat, lon"):
        builder.build_records("generic", str(manual), str(tmp_path / "data"), csv_path="photos.csv")
    records_dir, report = builder.build_records(
        "generic", str(manual), str(tmp_path / "data"), csv_path="photos.csv", id_column="key",
        image_column="picture", lat_column="y", lon_column="x")
    records = _records(records_dir, "train")
    assert sorted(records) == [f"k{i}" for i in range(5)] and report.written == 5
    assert [float(records[f"k{i}"]["lat"]) for i in range(5)] == [p[1] for p in data_fixtures.PLACES]
