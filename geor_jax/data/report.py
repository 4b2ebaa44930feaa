"""The build report: rows written, rows skipped per reason (with examples), and the checks that fail a build.

Two limits, checked over the whole build: malformed rows (every reason but
``image_missing``) against ``max_bad_fraction``, and rows whose image is
missing against ``max_missing_fraction`` (MP16-Pro lists about 11% more
rows than it ships images). A third check names a swapped header: when at
least 1% of the rows have a latitude past 90 that would be in range as a
longitude, and no row's longitude exceeds 90, the CSV's LAT and LON columns
are taken to be swapped and the build fails, whatever the fractions. Reports of shards or Beam
workers ``merge`` into the same report a single process writes.
"""

from __future__ import annotations

import dataclasses
import json

from geor_jax.data import rows

BAD_REASONS = ("text_undecodable", "image_missing", "image_unreadable", "lat_lon_missing", "lat_lon_not_numeric",
               "lat_lon_out_of_range", "duplicate_id")
MISSING_REASON = "image_missing"
EXAMPLES_PER_REASON = 5
_SWAP_EVIDENCE = 0.01  # swapped if at least this share of the rows is in range only swapped


class BadRowsError(ValueError):
    """No row, or too few rows, of a collection were good enough to trust the build (one-line message)."""

    def __init__(self, message: str, report: "BuildReport"):
        super().__init__(message)
        self.report = report


def _row_of(example: str) -> int:
    """The row number an example line starts with (``row 12 (id ...): ...``)."""
    return int(example.split(" ", 2)[1])


@dataclasses.dataclass
class BuildReport:
    """Per-reason counts of skipped rows, with the first few examples of each (by row number)."""

    layout: str
    csv_path: str
    split: str
    max_bad_fraction: float
    max_missing_fraction: float = 0.01
    lat_column: str = "lat"
    lon_column: str = "lon"
    total_rows: int = 0
    written: int = 0
    bad: dict[str, int] = dataclasses.field(default_factory=lambda: {r: 0 for r in BAD_REASONS})
    examples: dict[str, list[str]] = dataclasses.field(default_factory=lambda: {r: [] for r in BAD_REASONS})
    swap_fixes: int = 0  # out-of-range rows that swapping lat and lon would bring in range
    swap_breaks: int = 0  # in-range rows whose |lon| > 90, which swapping would break
    ids_requested: int | None = None  # with an id list: its length, rows not on it, ids never seen
    not_selected: int = 0
    ids_not_found: int = 0

    def add(self, outcome: "rows.Candidate | rows.Skipped") -> None:
        """Count one settled row: a written ``Candidate`` or a ``Skipped`` one."""
        self.total_rows += 1
        self.swap_fixes += outcome.swap > 0
        self.swap_breaks += outcome.swap < 0
        if isinstance(outcome, rows.Skipped):
            self.bad[outcome.reason] += 1
            if len(self.examples[outcome.reason]) < EXAMPLES_PER_REASON:
                self.examples[outcome.reason].append(
                    f"row {outcome.row_number} (id {outcome.id!r}): {outcome.detail}")
                self.examples[outcome.reason].sort(key=_row_of)
        else:
            self.written += 1

    def merge(self, other: "BuildReport") -> None:
        """Add ``other``'s counts (a shard's or a worker's); examples stay the first few by row number."""
        self.total_rows += other.total_rows
        self.written += other.written
        self.swap_fixes += other.swap_fixes
        self.swap_breaks += other.swap_breaks
        self.not_selected += other.not_selected
        self.ids_not_found += other.ids_not_found
        for reason in BAD_REASONS:
            self.bad[reason] += other.bad[reason]
            merged = sorted(set(self.examples[reason]) | set(other.examples[reason]), key=_row_of)
            self.examples[reason] = merged[:EXAMPLES_PER_REASON]

    @property
    def num_bad(self) -> int:
        """Rows skipped for any reason."""
        return sum(self.bad.values())

    @property
    def num_malformed(self) -> int:
        """Rows skipped for a reason other than a missing image."""
        return self.num_bad - self.bad[MISSING_REASON]

    @property
    def bad_fraction(self) -> float:
        """Malformed rows over all rows read (0 for an empty CSV)."""
        return self.num_malformed / self.total_rows if self.total_rows else 0.0

    @property
    def missing_fraction(self) -> float:
        """Rows without an image over all rows read."""
        return self.bad[MISSING_REASON] / self.total_rows if self.total_rows else 0.0

    @property
    def looks_swapped(self) -> bool:
        """Latitudes past 90 that fit as longitudes, and no longitude past 90: LAT and LON are swapped."""
        return self.swap_fixes > 0 and self.swap_breaks == 0 and self.swap_fixes >= _SWAP_EVIDENCE * self.total_rows

    def summary(self) -> str:
        """Human-readable report: totals, then each reason with its examples."""
        lines = [f"{self.layout} ({self.split}) from {self.csv_path}: {self.total_rows} rows, {self.written} written, "
                 f"{self.num_malformed} malformed ({100 * self.bad_fraction:.2f}%, limit "
                 f"{100 * self.max_bad_fraction:.2f}%), {self.bad[MISSING_REASON]} without an image "
                 f"({100 * self.missing_fraction:.2f}%, limit {100 * self.max_missing_fraction:.2f}%)"]
        if self.ids_requested is not None:
            lines.append(f"  id list: {self.ids_requested} ids, {self.not_selected} rows not on it, "
                         f"{self.ids_not_found} listed ids not in the collection")
        for reason in BAD_REASONS:
            if self.bad[reason]:
                lines.append(f"  {reason}: {self.bad[reason]}")
                lines.extend(f"    e.g. {example}" for example in self.examples[reason])
        return "\n".join(lines)

    def failure(self) -> str | None:
        """One line saying why the build must fail, or None if it may be published."""
        if self.looks_swapped:
            return (f"latitude and longitude look swapped: {self.swap_fixes} rows have |{self.lat_column}| > 90 "
                    f"that would fit as a longitude and no row has |{self.lon_column}| > 90; the header names them "
                    f"in the wrong order (an older im2gps3k_places365.csv says LON,LAT over latitude-first values): "
                    f"rebuild with --lat_column={self.lon_column} --lon_column={self.lat_column}")
        if self.written == 0:
            return (f"no rows written: all {self.total_rows} data rows of {self.csv_path} were skipped"
                    if self.total_rows else f"no rows written: {self.csv_path} has no data rows")
        problems = []
        if self.bad_fraction > self.max_bad_fraction:
            problems.append(f"too many bad rows: {self.num_malformed} of {self.total_rows} malformed "
                            f"({100 * self.bad_fraction:.2f}% > limit {100 * self.max_bad_fraction:.2f}%)")
        if self.missing_fraction > self.max_missing_fraction:
            problems.append(f"too many missing images: {self.bad[MISSING_REASON]} of {self.total_rows} rows have no "
                            f"image ({100 * self.missing_fraction:.2f}% > limit "
                            f"{100 * self.max_missing_fraction:.2f}%, --max_missing_fraction)")
        return "; ".join(problems) or None

    def check(self) -> None:
        """Raise ``BadRowsError`` (one line) if ``failure`` says the build must fail."""
        problem = self.failure()
        if problem:
            raise BadRowsError(problem, self)

    def to_dict(self) -> dict:
        """JSON-ready form (what ``build_report.json`` holds)."""
        return dataclasses.asdict(self) | {"num_bad": self.num_bad, "num_malformed": self.num_malformed,
                                           "bad_fraction": self.bad_fraction, "missing_fraction": self.missing_fraction}

    @classmethod
    def from_dict(cls, data: dict) -> "BuildReport":
        """The report ``to_dict`` wrote."""
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in fields})

    def save(self, path: str) -> None:
        """Write the report as JSON."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
