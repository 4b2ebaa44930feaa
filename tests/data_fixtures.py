"""Helpers writing small collections in each real on-disk layout (for the data tests)."""

import csv
import io
import os
import pickle
import tarfile
import zipfile

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


def jpeg_bytes(seed: int = 0, size=(64, 48)) -> bytes:
    """A small random RGB JPEG (width, height = size)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    PIL.Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    return out.getvalue()


def write_jpeg(path: str, seed: int = 0, size=(64, 48)) -> None:
    """``jpeg_bytes`` written to ``path``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(jpeg_bytes(seed, size))


def write_tar(path: str, members: dict[str, bytes]) -> list[tarfile.TarInfo]:
    """An uncompressed tar of ``members`` (name -> bytes); returns their TarInfos (offsets filled in)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        return tar.getmembers()


def split_file(path: str, prefix: str, num_chunks: int) -> list[str]:
    """Cut ``path`` into ``num_chunks`` byte chunks ``<prefix>00``, ``<prefix>01``, ... and delete it."""
    data = open(path, "rb").read()
    bounds = np.linspace(0, len(data), num_chunks + 1).astype(int)
    names = []
    for i in range(num_chunks):
        names.append(f"{prefix}{i:02d}")
        with open(names[-1], "wb") as f:
            f.write(data[bounds[i]:bounds[i + 1]])
    os.remove(path)
    return names


def write_zip(path: str, members: dict[str, bytes]) -> None:
    """A deflated zip of ``members`` (name -> bytes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def write_g3_tar_index(path: str, infos: list[tarfile.TarInfo]) -> None:
    """MP16-Pro's tar_index.pkl as G3 writes it: base name -> TarInfo."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({info.name.split("/")[-1]: info for info in infos}, f)


def _write_csv(path, header, rows):
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


_FOLDERS = {"generic": "photos", "mp16_pro": "mp-16-images", "im2gps3k": "im2gps3k_rgb_images",
            "yfcc4k": "yfcc4k_rgb_images", "yfcc26k": "yfcc25600", "geoclip": "images"}
_CSV_NAMES = {"generic": "images.csv", "mp16_pro": "MP16_Pro_places365.csv", "im2gps3k": "im2gps3k_places365.csv",
              "yfcc4k": "yfcc4k_places365.csv", "yfcc26k": "yfcc25600_places365.csv", "geoclip": "images.csv"}


def write_layout(root: str, layout: str, storage: str = "folder", csv_name: str | None = None,
                 ) -> tuple[list[str], dict]:
    """Write PLACES in ``layout``'s on-disk form under ``root``; returns (ids, extra build_records kwargs).

    ``storage``: "folder" (loose files), "tar" (one tar), "tars" (two tars
    named by --image_archives), "chunks" (one tar cut into 3 byte chunks, as
    MP16-Pro ships it), "chunks+index" (the same plus G3's tar_index.pkl) or
    "zip". Images are written only inside archives for every storage but
    "folder".
    """
    ids, refs, members = [], [], {}
    folder = _FOLDERS[layout]
    for i, (stem, lat, lon, cc) in enumerate(PLACES):
        if layout == "generic":
            ref = f"photos/{stem}.jpg"
            name = ref
        elif layout == "mp16_pro":
            ref = f"{i:02x}/a{i}/{1000 + i}_{stem}.jpg"  # a two-level IMG_ID; the tar keeps it flat with '_'
            name = f"{folder}/{ref.replace('/', '_')}"
        elif layout == "geoclip":
            ref = f"{stem}.jpg"
            name = f"{folder}/{ref}"
        else:
            ref = f"{1000 + i}_{stem}_{i}_12345678@N00.jpg"
            name = f"{folder}/{ref}"
        ids.append(ref)
        refs.append(ref)
        members[name] = jpeg_bytes(i)
    extra = {}
    if storage == "folder":
        for name, data in members.items():
            with_dirs = os.path.join(root, name)
            os.makedirs(os.path.dirname(with_dirs), exist_ok=True)
            with open(with_dirs, "wb") as f:
                f.write(data)
    elif storage == "tar":
        write_tar(os.path.join(root, "mp-16-images.tar" if layout == "mp16_pro" else "images.tar"), members)
        if layout != "mp16_pro":
            extra["image_archives"] = ("images.tar",)
    elif storage == "tars":
        names = list(members)
        write_tar(os.path.join(root, "shards", "part-0.tar"), {n: members[n] for n in names[:2]})
        write_tar(os.path.join(root, "shards", "part-1.tar"), {n: members[n] for n in names[2:]})
        extra["image_archives"] = ("shards/*.tar",)
    elif storage.startswith("chunks"):
        tar_path = os.path.join(root, "whole.tar")
        infos = write_tar(tar_path, members)
        split_file(tar_path, os.path.join(root, "mp-16-images"), 3)
        if layout != "mp16_pro":
            extra["image_chunks"] = ("mp-16-images[0-9][0-9]",)
        if storage == "chunks+index":
            write_g3_tar_index(os.path.join(root, "metadata", "tar_index.pkl"), infos)
    elif storage == "zip":
        name = {"im2gps3k": "im2gps3ktest.zip", "yfcc4k": "yfcc4k.zip", "yfcc26k": "yfcc25600.zip"}.get(layout,
                                                                                                   "images.zip")
        write_zip(os.path.join(root, name), members)
        if name == "images.zip":
            extra["image_archives"] = ("images.zip",)
    else:
        raise ValueError(storage)
    csv_path = os.path.join(root, csv_name or _CSV_NAMES[layout])
    os.makedirs(root, exist_ok=True)
    if layout == "generic":
        _write_csv(csv_path, ["image_path", "lat", "lon"], [[refs[i], lat, lon] for i, (_, lat, lon, _) in
                                                            enumerate(PLACES)])
    elif layout == "geoclip":
        _write_csv(csv_path, ["IMG_FILE", "LAT", "LON"], [[refs[i], lat, lon] for i, (_, lat, lon, _) in
                                                          enumerate(PLACES)])
    elif layout == "mp16_pro":
        _write_csv(csv_path, MP16_PRO_HEADER,
                   [[refs[i], "12345678@N00", lat, lon, 1, 7, 200, 0.1, 0.2, 0.7,
                     "", stem.title(), "", "Somestate", "", "Somecountry", cc.lower(), "Somecontinent"]
                    for i, (stem, lat, lon, cc) in enumerate(PLACES)])
    else:
        _write_csv(csv_path, PLACES365_HEADER,
                   [[refs[i], "12345678@N00", lat, lon, 2, 12, 353, 0.27, 0.05, 0.68]
                    for i, (_, lat, lon, _) in enumerate(PLACES)])
    return ids, extra


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
