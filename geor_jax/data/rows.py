"""From CSV rows to build candidates: strict coordinates, images located, rows skipped with their reason.

Every build path (single process, worker processes, ``--shard=i/n``, Beam)
runs the same pure steps, so they write the same examples:

1. ``scan`` classifies each row on its own: ``Skipped`` (``text_undecodable``,
   ``lat_lon_missing``, ``lat_lon_not_numeric``, ``lat_lon_out_of_range``,
   ``image_missing``) or a ``Candidate`` whose image was found.
2. ``resolve_copies`` settles the copies of one id in row order: the first
   whose image reads is written, unreadable ones before it are
   ``image_unreadable``, all after it ``duplicate_id``.

``shard_of`` sends all copies of an id to one shard (a stable hash of the
id), so shards can be built apart and merged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Container, Iterable, Iterator

from geor_jax.data import archives, layouts

_MISSING = {"", "nan", "none", "null", "na", "n/a"}
# float() also takes "1_0", "inf", "nan", and non-ASCII digits ("３５"); a CSV coordinate is plain ASCII.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A row with good coordinates and a located image (not yet read)."""

    row_number: int
    id: str
    lat: float
    lon: float
    place: dict[str, str]
    source: archives.Source
    swap: int = 0  # -1: |lon| > 90, so the columns are not swapped (see report.BuildReport.looks_swapped)


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A row left out, with its reason and a detail for the report."""

    reason: str
    row_number: int
    id: str
    detail: str
    swap: int = 0  # +1: out of range, but in range swapped; -1: in range with |lon| > 90


def parse_coordinates(lat_text: str, lon_text: str) -> tuple[float, float] | tuple[str, str]:
    """(lat, lon) floats, or (bad reason, detail) for a missing, non-numeric or out-of-range pair.

    Numbers are plain decimal or exponent notation (``-33.87``, ``3.5e1``);
    ``nan`` and the other ``_MISSING`` words mean missing.
    """
    lat_text, lon_text = lat_text.strip(), lon_text.strip()
    if lat_text.lower() in _MISSING or lon_text.lower() in _MISSING:
        return "lat_lon_missing", f"lat={lat_text!r} lon={lon_text!r}"
    if not (_NUMBER.fullmatch(lat_text) and _NUMBER.fullmatch(lon_text)):
        return "lat_lon_not_numeric", f"lat={lat_text!r} lon={lon_text!r}"
    lat, lon = float(lat_text), float(lon_text)
    if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
        return "lat_lon_out_of_range", f"lat={lat_text!r} lon={lon_text!r}"
    return lat, lon


def _swap_evidence(lat_text: str, lon_text: str) -> int:
    """+1 if an out-of-range pair would be in range swapped (|lat| > 90 >= |lon|), else 0."""
    lat, lon = abs(float(lat_text)), abs(float(lon_text))
    return int(math.isfinite(lat) and 90 < lat <= 180 and lon <= 90)


def shard_of(image_id: str, num_shards: int) -> int:
    """The shard (0..num_shards-1) every copy of ``image_id`` goes to: a stable hash, the same on every host."""
    digest = hashlib.blake2b(image_id.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def classify(row: layouts.RawRow, locator: archives.ImageLocator) -> Candidate | Skipped:
    """One row on its own: bad text, bad coordinates or no image, else a ``Candidate``."""
    if row.undecodable:
        return Skipped("text_undecodable", row.row_number, row.id, row.undecodable)
    checked = parse_coordinates(row.lat_text, row.lon_text)
    if isinstance(checked[0], str):
        swap = _swap_evidence(row.lat_text, row.lon_text) if checked[0] == "lat_lon_out_of_range" else 0
        return Skipped(checked[0], row.row_number, row.id, checked[1], swap)
    lat, lon = checked
    swap = -int(abs(lon) > 90)
    source = locator.find(row.image_ref)
    if source is None:
        return Skipped("image_missing", row.row_number, row.id, f"no image for {row.image_ref!r} in {locator.where}",
                       swap)
    return Candidate(row.row_number, row.id, lat, lon, row.place, source, swap)


def scan(rows: Iterable[layouts.RawRow], locator: archives.ImageLocator, *, ids: Container[str] | None = None,
         keep: Callable[[layouts.RawRow], bool] | None = None) -> Iterator[Candidate | Skipped | None]:
    """``classify`` each row; None for a row not in ``ids`` (when given), rows failing ``keep`` are dropped."""
    for row in rows:
        if keep is not None and not keep(row):
            continue
        if ids is not None and row.id not in ids:
            yield None
            continue
        yield classify(row, locator)


class FirstReadableCopy:
    """The duplicate rule, for copies seen in row order: the first copy of an id whose image reads is written.

    Unreadable copies before it are ``image_unreadable`` and do not claim the
    id; every copy after it is ``duplicate_id`` (and need not be read).
    """

    def __init__(self):
        self.written: dict[str, int] = {}  # id -> row number of its written copy

    def duplicate(self, copy: Candidate) -> Skipped | None:
        """``duplicate_id`` if ``copy``'s id is already written, else None (then its image must be read)."""
        if copy.id in self.written:
            return Skipped("duplicate_id", copy.row_number, copy.id,
                           f"id already written from row {self.written[copy.id]}", copy.swap)
        return None

    def settle(self, copy: Candidate, data: bytes | None, error: str) -> Skipped | None:
        """None if ``copy`` is written (its image ``data`` read), else why not."""
        skipped = self.duplicate(copy)
        if skipped is None and data is None:
            skipped = Skipped("image_unreadable", copy.row_number, copy.id, error, copy.swap)
        if skipped is None:
            self.written[copy.id] = copy.row_number
        return skipped


def resolve_copies(copies: Iterable[Candidate], read: Callable[[Candidate], tuple[bytes | None, str]],
                   ) -> Iterator[tuple[Candidate, bytes | None, Skipped | None]]:
    """All copies of one id, settled in row order: (copy, image bytes, None) if written, else (copy, None, why).

    ``read`` returns (bytes, "") or (None, error); copies after the written one are never read.
    """
    rule = FirstReadableCopy()
    for copy in sorted(copies, key=lambda c: c.row_number):
        skipped = rule.duplicate(copy)
        data, error = (None, "") if skipped else read(copy)
        skipped = skipped or rule.settle(copy, data, error)
        yield copy, (None if skipped else data), skipped
