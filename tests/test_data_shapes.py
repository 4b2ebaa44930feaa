"""Native batches' shapes: fitted patch-slot sizes are optimal (against brute force), size-sorted windows."""

import itertools

import numpy as np
import pytest

from geor_jax.data import shapes


def _padding(counts, slots):
    return sum(shapes.slot_for(n, slots) - n for n in counts)


def test_fitted_slots_minimise_padding_exactly():
    rng = np.random.default_rng(0)
    for _ in range(100):
        counts = rng.integers(1, 40, rng.integers(1, 15)).tolist()
        num_slots = int(rng.integers(1, 5))
        got = shapes.fit_slots(counts, num_slots, 40)
        assert len(got) <= num_slots and got[-1] == 40 and list(got) == sorted(set(got))
        candidates = sorted(set(counts) - {40})
        best = min(_padding(counts, list(c) + [40]) for r in range(min(num_slots - 1, len(candidates)) + 1)
                   for c in itertools.combinations(candidates, r))
        assert _padding(counts, got) == best


def test_mp16_like_sizes_get_their_own_slots():
    counts = [936] * 5 + [1564] * 10 + [3996] * 5  # 500x375, 640x480, 1024x768 at a 1280-token cap
    assert shapes.fit_slots(counts, 8, 5120) == (936, 1564, 3996, 5120)
    assert shapes.fit_slots(counts, 3, 5120) == (1564, 3996, 5120)
    assert shapes.fit_slots(counts, 1, 5120) == (5120,)


def test_bad_counts_and_oversized_images_are_errors():
    with pytest.raises(ValueError, match=r"patch counts must lie in \[1, 64\]"):
        shapes.fit_slots([65], 2, 64)
    with pytest.raises(ValueError, match="an image of 65 patches exceeds the largest slot 64"):
        shapes.slot_for(65, (16, 64))


def test_window_batches_hold_similar_sizes():
    sizes = [5, 1, 9, 3, 7, 2, 8, 4, 6]
    ordered = shapes.window_batches(sizes, 4, None)
    assert [[sizes[i] for i in b] for b in ordered] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    shuffled = shapes.window_batches(sizes, 4, np.random.default_rng(3))
    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, ordered))
