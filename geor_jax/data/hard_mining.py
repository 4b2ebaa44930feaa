"""MP16-Hard: keep the training samples far from every place the SFT model already solves.

Geo-R's RL stage drops every training sample within R km (200 by default)
of a "hotspot": a sample the SFT model already localises correctly. Groups of
completions on such easy places all score alike, so their GRPO advantages
vanish. Distances are found with a k-d tree over 3-D unit vectors: a
great-circle distance d is the chord 2 sin(d / 2R_earth), so one
nearest-neighbour query per sample answers "is any hotspot within R?"
exactly, in O((N + M) log M) instead of O(N * M).

``mine_streaming`` runs over a training set of any size in bounded memory:
it reads ids and coordinates only (a CSV, or the coordinates file next to
built records, never their images), one chunk at a time, and keeps only the
predictions (hotspots) whole.
"""

import csv
import dataclasses
import math

import numpy as np
from scipy.spatial import cKDTree

from geor_jax import geo


def unit_vectors(lat, lon) -> np.ndarray:
    """(N, 3) unit vectors on the sphere for degree arrays ``lat``, ``lon``."""
    lat, lon = np.radians(np.asarray(lat, np.float64)), np.radians(np.asarray(lon, np.float64))
    cos_lat = np.cos(lat)
    return np.stack([cos_lat * np.cos(lon), cos_lat * np.sin(lon), np.sin(lat)], axis=-1)


def chord_of_km(distance_km: float, radius_km: float = geo.EARTH_RADIUS_KM) -> float:
    """Straight-line distance between unit vectors that are ``distance_km`` apart on the surface."""
    return 2.0 * math.sin(min(distance_km / radius_km, math.pi) / 2.0)


def correct_predictions(pred_lat, pred_lon, true_lat, true_lon, correct_km: float = 25.0) -> np.ndarray:
    """Boolean mask of predictions within ``correct_km`` of the truth (NaN predictions are wrong)."""
    pred_lat, pred_lon = np.asarray(pred_lat, np.float64), np.asarray(pred_lon, np.float64)
    a, b = unit_vectors(pred_lat, pred_lon), unit_vectors(true_lat, true_lon)
    chord = np.linalg.norm(a - b, axis=-1)
    return np.isfinite(chord) & (chord <= chord_of_km(correct_km))


def far_from_hotspots(lat, lon, hotspot_lat, hotspot_lon, radius_km: float = 200.0, workers: int = -1) -> np.ndarray:
    """Boolean mask over samples: True where every hotspot is farther than ``radius_km``.

    ``lat``/``lon``: (N,) training coordinates; ``hotspot_*``: (M,) coordinates
    of correctly solved samples. With no hotspots every sample is kept.
    """
    points = unit_vectors(lat, lon)
    if len(np.atleast_1d(hotspot_lat)) == 0:
        return np.ones(len(points), bool)
    tree = cKDTree(unit_vectors(hotspot_lat, hotspot_lon))
    limit = chord_of_km(radius_km)
    distance, _ = tree.query(points, k=1, distance_upper_bound=limit * (1 + 1e-12), workers=workers)
    return ~(distance <= limit)


# Streaming: mining 4.7M samples keeps only the predictions and a few blocks of the training set in memory.
# The CSVs are parsed by pyarrow (a tensorflow-datasets dependency): vectorised, ~20x Python's csv module here.
# Its streaming reader reads ~32 blocks ahead: about 9 MiB (plus ~30 MiB of its own buffers) for any file size.
BLOCK_BYTES = 1 << 18
_ID, _LAT, _LON = ("id", "img_id", "image_id", "image_path"), ("lat", "latitude"), ("lon", "lng", "longitude")


def _header(path: str) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), None) or []


def _column(header, *names):
    """The first of ``names`` in ``header`` (case-insensitive) as written there, or None."""
    lowered = {h.strip().lower(): h for h in reversed(header)}
    return next((lowered[name] for name in names if name in lowered), None)


def iter_id_coordinates(paths, block_bytes: int = BLOCK_BYTES):
    """(ids, lat, lon) chunks of CSVs with id, lat, lon columns (aliases: img_id/image_id/image_path,
    latitude, lng/longitude): the training set, or the ``<split>.coordinates*.csv`` next to built records.

    A chunk is one block of ``block_bytes`` (~6k rows of a coordinates file).
    ``ids`` is a pyarrow string array, ``lat``/``lon`` float64 numpy arrays.
    A cell that is not a number is a ValueError naming the file.
    """
    import pyarrow as pa
    import pyarrow.csv as pv

    for path in paths:
        header = _header(path)
        names = [_column(header, *_ID), _column(header, *_LAT), _column(header, *_LON)]
        if None in names:
            raise ValueError(f"{path}: need id, lat and lon columns, header is {header}")
        read = pv.ReadOptions(block_size=block_bytes, use_threads=False)
        convert = pv.ConvertOptions(include_columns=names, column_types={names[0]: pa.string(),
                                                                          names[1]: pa.float64(),
                                                                          names[2]: pa.float64()})
        try:
            for batch in pv.open_csv(path, read_options=read, convert_options=convert):
                ids, lat, lon = (batch.column(name) for name in names)
                if lat.null_count or lon.null_count:
                    raise ValueError("empty lat/lon cells")
                yield ids, lat.to_numpy(), lon.to_numpy()
        except (pa.ArrowInvalid, ValueError) as error:
            raise ValueError(f"{path}: {str(error).splitlines()[0]}") from None


@dataclasses.dataclass
class Predictions:
    """The SFT model's predictions, with ids as a pyarrow array for vectorised joins with training chunks."""

    ids: object  # pyarrow.StringArray
    pred_lat: np.ndarray
    pred_lon: np.ndarray
    true_lat: np.ndarray | None  # None: joined from the training set by id
    true_lon: np.ndarray | None
    correct: np.ndarray | None  # a 0/1 ``correct`` column, if the file has one

    def __len__(self):
        return len(self.ids)


def _numbers(column) -> np.ndarray:
    """A pyarrow string column as float64; text that is no number becomes NaN (an unparsable prediction)."""
    import pyarrow as pa

    try:
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        def number(text):
            try:
                return float(text)
            except (TypeError, ValueError):
                return float("nan")
        return np.array([number(text) for text in column.to_pylist()])


def read_predictions(path: str) -> Predictions:
    """A predictions CSV: id, pred_lat, pred_lon [, lat, lon | correct] (unparsable predictions are wrong)."""
    import pyarrow as pa
    import pyarrow.csv as pv

    header = _header(path)
    i, flag = _column(header, "id", "img_id", "image_id"), _column(header, "correct")
    pla, plo = _column(header, "pred_lat", "predicted_lat"), _column(header, "pred_lon", "predicted_lon")
    tla, tlo = _column(header, "lat", "latitude", "true_lat"), _column(header, "lon", "longitude", "true_lon")
    if i is None or (flag is None and None in (pla, plo)):
        raise ValueError(f"{path}: need id and pred_lat/pred_lon (or correct), header is {header}")
    wanted = [c for c in (i, flag, pla, plo, tla, tlo) if c is not None]
    table = pv.read_csv(path, read_options=pv.ReadOptions(encoding="utf-8"),
                        convert_options=pv.ConvertOptions(include_columns=wanted,
                                                          column_types={c: pa.string() for c in wanted}))
    column = lambda c: None if c is None else _numbers(table.column(c))  # noqa: E731
    correct = None if flag is None else np.isin(np.char.lower(np.array(table.column(flag).to_pylist(), str)),
                                                ["1", "true", "yes"])
    truth = tla is not None and tlo is not None
    return Predictions(table.column(i).combine_chunks(), column(pla), column(plo),
                       column(tla) if truth else None, column(tlo) if truth else None, correct)


def _match(predictions: Predictions, chunk_ids) -> tuple[np.ndarray, np.ndarray]:
    """(positions in the chunk, positions in ``predictions``) of the chunk's ids that were predicted."""
    import pyarrow.compute as pc

    where = pc.index_in(chunk_ids, value_set=predictions.ids)
    rows = np.flatnonzero(where.is_valid().to_numpy(zero_copy_only=False))
    return rows, where.drop_null().to_numpy().astype(np.int64)


def mine_streaming(train_chunks, predictions: Predictions, out, radius_km: float = 200.0,
                   correct_km: float = 25.0) -> dict:
    """Write (to the text file ``out``) the training ids farther than ``radius_km`` from every hotspot.

    ``train_chunks`` is a callable returning a fresh iterator of (ids, lat,
    lon) chunks (``iter_id_coordinates``); it is read twice when the
    predictions lack the truth (joined by id in a first pass), else once. A
    hotspot is the truth of a prediction within ``correct_km`` (or flagged
    correct). Memory: the predictions and one chunk, whatever the training
    set's size. Raises ValueError if a predicted id is not in the training set.
    """
    found = np.zeros(len(predictions), bool)
    true_lat, true_lon = predictions.true_lat, predictions.true_lon
    joined = true_lat is None
    if joined:
        true_lat, true_lon = np.full(len(predictions), np.nan), np.full(len(predictions), np.nan)
        for ids, lat, lon in train_chunks():
            rows, hit = _match(predictions, ids)
            true_lat[hit], true_lon[hit], found[hit] = lat[rows], lon[rows], True
    correct = (predictions.correct if predictions.correct is not None else
               correct_predictions(predictions.pred_lat, predictions.pred_lon, true_lat, true_lon, correct_km))
    hot = np.flatnonzero(correct & (found if joined else True))
    train = kept = 0
    for ids, lat, lon in train_chunks():
        if not joined:
            found[_match(predictions, ids)[1]] = True
        keep = far_from_hotspots(lat, lon, true_lat[hot], true_lon[hot], radius_km)
        out.writelines(f"{key}\n" for key in ids.filter(keep).to_pylist())
        train += len(ids)
        kept += int(keep.sum())
    if not found.all():
        missing = predictions.ids.filter(~found).to_pylist()[:3]
        raise ValueError(f"{int((~found).sum())} predicted ids are not in the training set, e.g. {missing}")
    return {"train": train, "predictions": len(predictions), "hotspots": len(hot), "kept": kept,
            "radius_km": radius_km, "correct_km": correct_km}
