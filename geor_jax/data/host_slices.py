"""Evaluation across hosts: every record read exactly once, each global batch in record order, the last one padded.

``ShardByJaxProcess`` gives each host a contiguous share of the records and
drops what does not divide; hosts whose shares differ in length would also
run different numbers of batches (and hang in the collectives of the last
one). ``PaddedHostSlices`` is one host's view instead: global batch b holds
records b*B ... b*B + B - 1 (B = hosts x host batch), host h reads its h-th
part of each, and past the last record rows repeat it, flagged as padding
(``example_mask`` 0). Every host reads the same number of batches, and the
batches are the ones a single host reads, whatever the host count. A
shuffled padded pipeline permutes the records once (``order``), so the
padding stays at the end.
"""

from __future__ import annotations

import math

import numpy as np

PADDING_KEY = "_padding"  # True on a row that only fills the last batch


class PaddedHostSlices:
    """A grain random-access source: this host's rows of every global batch over ``source`` (see module)."""

    def __init__(self, source, host_batch_size: int, process_index: int, process_count: int,
                 order: np.ndarray | None = None):
        self.source, self.host_batch_size, self.order = source, host_batch_size, order
        self.process_index, self.process_count = process_index, process_count
        self.num_records = len(source)
        self.num_batches = math.ceil(self.num_records / (host_batch_size * process_count))

    def __len__(self) -> int:
        return self.num_batches * self.host_batch_size

    def global_index(self, index: int) -> int:
        """The record position (maybe past the end: padding) of this host's row ``index``."""
        batch, row = divmod(index, self.host_batch_size)
        return (batch * self.process_count + self.process_index) * self.host_batch_size + row

    def __getitem__(self, index: int) -> dict:
        position = self.global_index(index)
        record = min(position, self.num_records - 1)
        record = int(self.order[record]) if self.order is not None else record
        return {**self.source[record], PADDING_KEY: position >= self.num_records}
