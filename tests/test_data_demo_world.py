"""The embedded demo world: deterministic, location-dependent, builds into CoR records.

Its build time is measured in tools/bench/demo_world.py."""

import csv

import numpy as np
import PIL.Image

from geor_jax.data import builder, demo_world


def test_demo_world_is_deterministic_and_location_dependent(tmp_path):
    csv_path = demo_world.make_demo_world(str(tmp_path / "a"), num_images=120, seed=3)
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 120 and set(rows[0]) == {"id", "image_path", "lat", "lon"}
    demo_world.make_demo_world(str(tmp_path / "b"), num_images=120, seed=3)
    first = np.asarray(PIL.Image.open(tmp_path / "a" / rows[7]["image_path"]))
    again = np.asarray(PIL.Image.open(tmp_path / "b" / rows[7]["image_path"]))
    assert first.shape == (224, 224, 3) and np.array_equal(first, again)

    # The ground colour alone separates countries: nearest-centroid accuracy well above chance (1/6).
    places = demo_world.sample_places(120, seed=3)
    features = np.stack([
        np.asarray(PIL.Image.open(tmp_path / "a" / row["image_path"]))[-40:].reshape(-1, 3).mean(0)
        for row in rows])
    labels = np.array([p.country_code for p in places])
    centroids = {cc: features[labels == cc].mean(0) for cc in demo_world.DEMO_COUNTRIES}
    predicted = [min(centroids, key=lambda cc: np.linalg.norm(f - centroids[cc])) for f in features]
    assert np.mean(np.array(predicted) == labels) > 0.8


def test_demo_records_hold_demo_countries(tmp_path):
    records_dir, report = demo_world.build_demo_records(str(tmp_path / "data"), num_images=48, seed=1)
    assert report.written == 48 and report.num_bad == 0
    source = builder.open_records(records_dir, "train")
    codes = [source[i]["country_code"].decode() for i in range(len(source))]
    assert len(codes) == 48
    assert np.mean([c in demo_world.DEMO_COUNTRIES for c in codes]) >= 0.9
