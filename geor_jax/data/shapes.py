"""Static shapes for native-resolution batches: a few patch-slot sizes, fitted to the data.

Each image keeps the size the processor gives it, so its patch count varies.
A batch puts every image in a slot of L patches (``qwen2_5_vl.image_rows``)
and pads its prompts to the longest prompt an L-patch image can have, so a
batch's shape is fixed by L alone and the number of compiled shapes is the
number of slot sizes. ``fit_slots`` picks at most ``num_slots`` sizes that
minimise the padding over a sample of the data (the largest always holds any
image the processor can make); ``window_batches`` sorts a window of examples
by size before cutting it into batches, so each batch holds images of
similar size and pads little.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np


def fit_slots(patch_counts: Sequence[int], num_slots: int, max_patches: int) -> tuple[int, ...]:
    """At most ``num_slots`` ascending slot sizes, the last ``max_patches``, minimising the padding of
    ``patch_counts`` when each count takes the smallest slot that holds it.

    Exact: a dynamic programme over the sorted distinct counts (the optimal
    sizes are among them), O(num_slots * distinct**2) in numpy.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots must be >= 1, got {num_slots}")
    counts = np.asarray(patch_counts, np.int64)
    if counts.size and (counts.min() < 1 or counts.max() > max_patches):
        raise ValueError(f"patch counts must lie in [1, {max_patches}], got [{counts.min()}, {counts.max()}]")
    values, weights = np.unique(counts, return_counts=True)
    if values.size and values[-1] == max_patches:
        values, weights = values[:-1], weights[:-1]  # the top slot holds them at no cost
    free = min(num_slots - 1, values.size)  # slots below max_patches
    if free == 0:
        return (int(max_patches),)
    if free == values.size:
        return tuple(int(v) for v in values) + (int(max_patches),)
    count_sum = np.concatenate([[0], np.cumsum(weights)])
    value_sum = np.concatenate([[0], np.cumsum(weights * values)])

    def group_cost(first: np.ndarray, last: int) -> np.ndarray:
        """Padding of values[first..last] (first an array) in a slot of values[last]."""
        n = count_sum[last + 1] - count_sum[first]
        return values[last] * n - (value_sum[last + 1] - value_sum[first])

    m = values.size
    # cost[k, j]: least padding of values[:j+1] with k+1 slots, the last at values[j]; the top slot then holds the rest.
    cost = np.full((free, m), np.inf)
    back = np.zeros((free, m), np.int64)
    cost[0] = values * count_sum[1:] - value_sum[1:]
    for k in range(1, free):
        for j in range(k, m):
            previous = np.arange(k - 1, j)  # the slot before sits at values[i]
            total = cost[k - 1, previous] + group_cost(previous + 1, j)
            best = int(np.argmin(total))
            cost[k, j], back[k, j] = total[best], previous[best]
    above = lambda j: (max_patches * (count_sum[m] - count_sum[j + 1]) - (value_sum[m] - value_sum[j + 1]))  # noqa: E731
    k, j = free - 1, int(np.argmin([cost[free - 1, j] + above(j) for j in range(m)]))
    chosen = [j]
    while k > 0:
        j = int(back[k, j])
        k -= 1
        chosen.append(j)
    return tuple(int(values[j]) for j in reversed(chosen)) + (int(max_patches),)


def slot_for(patch_count: int, slots: Sequence[int]) -> int:
    """The smallest slot holding ``patch_count`` patches (``ValueError`` if none does)."""
    index = bisect.bisect_left(slots, patch_count)
    if index == len(slots):
        raise ValueError(f"an image of {patch_count} patches exceeds the largest slot {slots[-1]}")
    return int(slots[index])


def window_batches(sizes: Sequence[int], batch_size: int, rng: np.random.Generator | None) -> list[list[int]]:
    """A window of examples cut into batches of similar size: lists of indices into ``sizes``.

    Examples are sorted by size (ties keep their order) and cut into
    ``batch_size`` runs (the last may be short); with ``rng`` the runs come
    in random order, so training does not see small images, then large ones.
    """
    order = np.argsort(np.asarray(sizes), kind="stable")
    batches = [order[i : i + batch_size].tolist() for i in range(0, len(order), batch_size)]
    return batches if rng is None else [batches[i] for i in rng.permutation(len(batches))]
