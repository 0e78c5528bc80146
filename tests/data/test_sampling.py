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


def test_dense_train_random_start():
    # n=100, 4 frames every 5: span 20, start in [0, 80]
    assert S.dense_indices(100, 4, 5, FixedRng([0])) == [0, 5, 10, 15]
    assert S.dense_indices(100, 4, 5, FixedRng([80])) == [80, 85, 90, 95]
    assert S.dense_indices(100, 4, 5, FixedRng([33])) == [33, 38, 43, 48]
    got = S.dense_indices(100, 4, 5, np.random.default_rng(0))
    start = int(np.random.default_rng(0).integers(81))
    assert got == [start, start + 5, start + 10, start + 15]


def test_dense_eval_and_short_padding():
    assert S.dense_indices(100, 4, 5) == [40, 45, 50, 55]  # centred: (100 - 20) // 2
    assert S.dense_indices(10, 4, 4, FixedRng([])) == [0, 4, 8, 9]  # padded with frame 9
    assert S.dense_indices(3, 4, 2) == [0, 2, 2, 2]
    assert S.is_short("dense", 10, 4, 4) and not S.is_short("dense", 13, 4, 4)


def test_dense_test_views():
    views = S.dense_test_views(100, 4, 5, 5)  # room 80, starts 0, 20, 40, 60, 80
    assert [v[0] for v in views] == [0, 20, 40, 60, 80]
    assert views[-1] == [80, 85, 90, 95]
    assert S.dense_test_views(100, 4, 5, 1) == [[40, 45, 50, 55]]
    assert S.dense_test_views(50, 4, 5, 3) == [[0, 5, 10, 15], [15, 20, 25, 30], [30, 35, 40, 45]]
    assert S.dense_test_views(6, 4, 2, 2) == [[0, 2, 4, 5], [0, 2, 4, 5]]


def test_segment_train():
    # n=35, 4 segments of 35 // 4 = 8 frames: i*8 + offset
    assert S.segment_indices(35, 4, FixedRng([7, 0, 3, 5])) == [7, 8, 19, 29]
    got = S.segment_indices(35, 4, np.random.default_rng(1))
    assert all(8 * i <= g < 8 * (i + 1) for i, g in enumerate(got))
    assert S.segment_indices(3, 6, FixedRng([])) == [0, 0, 1, 1, 2, 2]  # short: repeats


def test_segment_eval_and_test_views_match_reference_offsets():
    assert S.segment_indices(32, 8) == [2, 6, 10, 14, 18, 22, 26, 30]  # tick 4, centre
    # reference SSv2 test, n=50, 16 segments, 2 views: tick 3.125, offsets 0 and tick/2
    v0, v1 = S.segment_test_views(50, 16, 2)
    assert v0 == [0, 3, 6, 9, 12, 15, 18, 21, 25, 28, 31, 34, 37, 40, 43, 46]
    assert v1 == [1, 4, 7, 10, 14, 17, 20, 23, 26, 29, 32, 35, 39, 42, 45, 48]
    assert S.all_test_views("segment", 50, 16, 4, 2) == [v0, v1]


def test_crop_starts():
    assert S.crop_starts(320, 224, 3) == [0, 48, 96]
    assert S.crop_starts(320, 224, 1) == [48]
    assert S.crop_starts(224, 224, 3) == [0, 0, 0]


def test_clip_indices_dispatch():
    assert S.clip_indices("dense", 100, 4, 5) == [40, 45, 50, 55]
    assert S.clip_indices("segment", 32, 8, 4) == [2, 6, 10, 14, 18, 22, 26, 30]
