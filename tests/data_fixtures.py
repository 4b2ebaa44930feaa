"""Helpers writing small collections in each real on-disk layout (for the data tests)."""

import csv
import os

import numpy as np
import PIL.Image

# (id stem, lat, lon, ISO country) of a few unmistakable places.
PLACES = [
    ("tokyo", 35.6895, 139.6917, "JP"),
    ("paris", 48.8566, 2.3522, "FR"),
    ("sydney", -33.8688, 151.2093, "AU"),
    ("newyork", 40.7128, -74.0060, "US"),
    ("cairo", 30.0444, 31.2357, "EG"),
]
PLACES365_HEADER = ["IMG_ID", "AUTHOR", "LAT", "LON", "S3_Label", "S16_Label", "S365_Label",
                    "Prob_indoor", "Prob_natural", "Prob_urban"]
MP16_PRO_HEADER = PLACES365_HEADER + ["neighbourhood", "city", "county", "state", "region", "country",
                                      "country_code", "continent"]


def write_jpeg(path: str, seed: int = 0, size=(64, 48)) -> None:
    """A small random RGB JPEG (width, height = size)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    PIL.Image.fromarray(pixels).save(path, quality=90)


def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def write_layout(root: str, layout: str) -> list[str]:
    """Write PLACES in ``layout``'s exact on-disk form under ``root``; returns the ids."""
    ids = []
    for i, (stem, lat, lon, cc) in enumerate(PLACES):
        if layout == "generic":
            image_ref = f"photos/{stem}.jpg"
            write_jpeg(os.path.join(root, image_ref), i)
            ids.append(image_ref)
        elif layout == "mp16_pro":
            # IMG_ID is a two-level relative path; the unpacked tar keeps it flat with '_'.
            image_ref = f"{i:02x}/a{i}/{1000 + i}_{stem}.jpg"
            write_jpeg(os.path.join(root, "mp-16-images", image_ref.replace("/", "_")), i)
            ids.append(image_ref)
        else:
            image_ref = f"{1000 + i}_{stem}_{i}_12345678@N00.jpg"
            folder = {"im2gps3k": "im2gps3k_rgb_images", "yfcc4k": "yfcc4k_rgb_images"}[layout]
            write_jpeg(os.path.join(root, folder, image_ref), i)
            ids.append(image_ref)
    if layout == "generic":
        _write_csv(os.path.join(root, "images.csv"), ["image_path", "lat", "lon"],
                   [[ids[i], lat, lon] for i, (_, lat, lon, _) in enumerate(PLACES)])
    elif layout == "mp16_pro":
        _write_csv(os.path.join(root, "MP16_Pro_places365.csv"), MP16_PRO_HEADER,
                   [[ids[i], "12345678@N00", lat, lon, 1, 7, 200, 0.1, 0.2, 0.7,
                     "", stem.title(), "", "Somestate", "", "Somecountry", cc.lower(), "Somecontinent"]
                    for i, (stem, lat, lon, cc) in enumerate(PLACES)])
    else:
        name = {"im2gps3k": "im2gps3k_places365.csv", "yfcc4k": "yfcc4k_places365.csv"}[layout]
        _write_csv(os.path.join(root, name), PLACES365_HEADER,
                   [[ids[i], "12345678@N00", lat, lon, 2, 12, 353, 0.27, 0.05, 0.68]
                    for i, (_, lat, lon, _) in enumerate(PLACES)])
    return ids


# Coordinates that need float64: float32 moves each point by 0.2-0.9 m.
EXACT = [("a.jpg", "35.123456789012345", "139.98765432101234"), ("b.jpg", "-33.86881234567891", "-0.000001234567891"),
         ("c.jpg", "89.99999999999999", "-179.99999999999997")]


def write_exact_collection(root: str) -> dict[str, tuple[float, float]]:
    """A generic collection of EXACT (coordinates as written above); returns id -> (lat, lon) as float64."""
    for i, (name, _, _) in enumerate(EXACT):
        write_jpeg(os.path.join(root, name), i)
    with open(os.path.join(root, "images.csv"), "w", encoding="utf-8") as f:
        f.write("image_path,lat,lon\n" + "".join(f"{name},{lat},{lon}\n" for name, lat, lon in EXACT))
    return {name: (float(lat), float(lon)) for name, lat, lon in EXACT}


def write_sized_collection(root: str, sizes) -> None:
    """A generic collection of len(sizes) JPEGs of the given (width, height), at PLACES in turn."""
    rows = []
    for i, size in enumerate(sizes):
        stem, lat, lon, _ = PLACES[i % len(PLACES)]
        write_jpeg(os.path.join(root, f"{i:03d}_{stem}.jpg"), i, size=size)
        rows.append(f"{i:03d}_{stem}.jpg,{lat + i * 1e-3},{lon}\n")
    with open(os.path.join(root, "images.csv"), "w", encoding="utf-8") as f:
        f.write("image_path,lat,lon\n" + "".join(rows))
