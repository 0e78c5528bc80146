"""Sampling: indices checked against values computed by hand."""

from __future__ import annotations

import random

import numpy as np
import pytest

from aptune.data import sampling as S


class FixedRng(random.Random):
    """random.Random whose randrange returns a scripted sequence."""

    def __init__(self, values):
        super().__init__(0)
        self.values = list(values)

    def randrange(self, n):  # noqa: D102
        v = self.values.pop(0)
        assert 0 <= v < n
        return v


def test_mode_from_data_set_and_override():
    assert S.sampling_mode("SSV2") == "segment"
    for name in ("UCF101", "HMDB51", "Kinetics-400", "image_folder"):
        assert S.sampling_mode(name) == "dense"
    assert S.sampling_mode("SSV2", "dense") == "dense"
    assert S.sampling_mode("UCF101", "segment") == "segment"
    with pytest.raises(ValueError, match="sampling must be one of"):
        S.sampling_mode("UCF101", "uniform")


def _ref_dense_train(n, t, r, end):
    """The reference's dense train formula for the draw `end` (written out independently)."""
    span = t * r
    if n <= span:
        index = np.linspace(0, n, num=n // r)
        index = np.concatenate((index, np.ones(t - n // r) * n))
        return np.clip(index, 0, n - 1).astype(np.int64).tolist()
    index = np.linspace(end - span, end, num=t)
    return np.clip(index, end - span, end - 1).astype(np.int64).tolist()


@pytest.mark.parametrize("t,r", [(4, 3), (5, 2), (1, 4), (16, 4)])
def test_dense_train_every_draw_matches_the_formula(t, r):
    for n in range(1, t * r + 12):
        if n <= t * r:  # short: no draw at all
            expected = {tuple(_ref_dense_train(n, t, r, None))}
        else:  # end = randint(T*r, n): every possible draw
            expected = {tuple(_ref_dense_train(n, t, r, e)) for e in range(t * r, n)}
            got = {tuple(S.dense_clip_ending(n, t, r, e)) for e in range(t * r, n)}
            assert got == expected
        rng = np.random.default_rng(n)
        draws = 1 if len(expected) == 1 else 20 * len(expected)  # misses one: p < 1e-6
        drawn = {tuple(S.dense_train_indices(n, t, r, rng)) for _ in range(draws)}
        assert drawn == expected  # the sampler reaches every outcome and nothing else
        assert all(len(c) == t and 0 <= min(c) and max(c) < n for c in drawn)


def test_dense_train_by_hand():
    # n=100, T=4, r=5: span 20; end 20 -> linspace(0, 20, 4) = 0, 6.7, 13.3, 20 -> clip 19
    assert S.dense_clip_ending(100, 4, 5, 20) == [0, 6, 13, 19]
    assert S.dense_clip_ending(100, 4, 5, 99) == [79, 85, 92, 98]
    assert S.dense_train_indices(10, 4, 4, FixedRng([])) == [0, 9, 9, 9]  # short: padded n
    assert S.dense_train_indices(3, 4, 4, FixedRng([])) == [2, 2, 2, 2]  # n // r == 0
    assert S.dense_train_indices(100, 4, 5, FixedRng([33])) == [33, 39, 46, 52]  # end 53
    # val: end in the middle of [20, 100): 20 + 79 // 2 = 59 -> linspace(39, 59, 4)
    assert S.dense_train_indices(100, 4, 5) == [39, 45, 52, 58]
    assert S.is_short("dense", 15, 4, 4) and not S.is_short("dense", 16, 4, 4)
    with pytest.raises(ValueError, match="end must be in"):
        S.dense_clip_ending(100, 4, 5, 100)


def test_exact_stride_clip_for_pretraining():
    assert S.dense_indices(100, 4, 5, FixedRng([33])) == [33, 38, 43, 48]
    assert S.dense_indices(100, 4, 5) == [40, 45, 50, 55]  # centred: (100 - 20) // 2
    assert S.dense_indices(10, 4, 4, FixedRng([])) == [0, 4, 8, 9]  # padded with frame 9


def test_dense_test_views():
    # buffer 0, 5, ..., 95 (B = 20), step (20 - 4) / 4 = 4: buffer starts 0, 4, 8, 12, 16
    views = S.dense_test_views(100, 4, 5, 5)
    assert [v[0] for v in views] == [0, 20, 40, 60, 80]
    assert views[-1] == [80, 85, 90, 95]
    assert S.dense_test_views(100, 4, 5, 1) == [[40, 45, 50, 55]]  # S = 1: centred buffer
    # B = 10, step 3: starts 0, 3, 6 -> frames 0, 15, 30 (multiples of r, not (n - T*r) / 2)
    assert S.dense_test_views(50, 4, 5, 3) == [[0, 5, 10, 15], [15, 20, 25, 30], [30, 35, 40, 45]]
    assert S.dense_test_views(6, 4, 2, 2) == [[0, 2, 4, 4], [0, 2, 4, 4]]  # padded buffer
    # the example: 280 frames, 16 x 4, 5 views: buffer 70, step 13.5
    assert [v[0] for v in S.dense_test_views(280, 16, 4, 5)] == [0, 52, 108, 160, 216]


def test_segment_train_every_draw():
    n, t = 35, 4  # chunks of 35 // 4 = 8 frames: x * 8 + draw
    for draws in [(7, 0, 3, 5), (0, 0, 0, 0), (7, 7, 7, 7)]:
        assert S.segment_clip_with(n, t, list(draws)) == [x * 8 + d for x, d in enumerate(draws)]
    assert S.segment_train_indices(35, 4, FixedRng([7, 0, 3, 5])) == [7, 8, 19, 29]
    rng = np.random.default_rng(1)
    seen = [set() for _ in range(t)]
    for _ in range(400):
        for x, i in enumerate(S.segment_train_indices(n, t, rng)):
            seen[x].add(i)
    assert seen == [set(range(8 * x, 8 * x + 8)) for x in range(t)]  # every frame of a chunk
    assert S.segment_train_indices(3, 6, FixedRng([])) == [0] * 6  # n < T: the reference's 0s
    assert S.segment_train_indices(6, 6, FixedRng([0] * 6)) == list(range(6))


def test_segment_eval_and_test_views_match_reference_offsets():
    assert S.segment_train_indices(32, 8) == [2, 6, 10, 14, 18, 22, 26, 30]  # val: centres
    # reference SSv2 test, n=50, 16 segments, 2 views: tick 3.125, offsets 0 and tick/2
    v0, v1 = S.segment_test_views(50, 16, 2)
    assert v0 == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 46]
    assert v1 == [1, 4, 7, 10, 14, 17, 20, 23, 26, 29, 32, 35, 39, 42, 45, 48]
    assert S.all_test_views("segment", 50, 16, 4, 2) == [v0, v1]
    # n < 2T: the reference sorts the two offset lists together, then alternates
    assert S.segment_test_views(5, 4, 2) == [[0, 1, 2, 3], [0, 1, 3, 4]]


def test_crop_starts():
    assert S.crop_starts(320, 224, 3) == [0, 48, 96]
    assert S.crop_starts(298, 224, 3) == [0, 37, 74]
    assert S.crop_starts(320, 224, 1) == [48]
    assert S.crop_starts(299, 224, 1) == [38]  # round(37.5): the reference's CenterCrop
    assert S.crop_starts(224, 224, 3) == [0, 0, 0]


def test_clip_indices_dispatch():
    assert S.clip_indices("dense", 100, 4, 5) == [39, 45, 52, 58]
    assert S.clip_indices("segment", 32, 8, 4) == [2, 6, 10, 14, 18, 22, 26, 30]
