"""Synthetic videos: real files per codec, motion-defined classes, quick generation."""

from __future__ import annotations

import time

import numpy as np
import pytest

from aptune.data import open_video
from aptune.data.synthetic import MOTION_CLASSES, make_action_dataset, make_clip, write_video


def _centroid_x(clip: np.ndarray, t: int) -> float:
    """x centre of the moving shape: pixels far from the temporal median (the background)."""
    median = np.median(clip, axis=0)
    mask = np.abs(clip[t].astype(float) - median).sum(-1) > 60
    return float(np.nonzero(mask)[1].mean())


def test_class_is_the_motion_and_flip_swaps_left_right():
    rng = np.random.default_rng(0)
    left = make_clip(MOTION_CLASSES.index("move_left"), 16, (64, 64), rng)
    right = make_clip(MOTION_CLASSES.index("move_right"), 16, (64, 64), rng)
    assert left.shape == (16, 64, 64, 3) and left.dtype == np.uint8
    assert _centroid_x(left, 15) < _centroid_x(left, 0) - 10
    assert _centroid_x(right, 15) > _centroid_x(right, 0) + 10
    flipped = left[:, :, ::-1]
    assert _centroid_x(flipped, 15) > _centroid_x(flipped, 0) + 10  # looks like move_right


@pytest.mark.parametrize("ext", ["avi", "mp4", "webm"])
def test_write_video_round_trip(tmp_path, ext):
    clip = make_clip(4, 12, (48, 64), np.random.default_rng(1))
    path = write_video(tmp_path / f"v.{ext}", clip, fps=12)
    with open_video(path, "pyav") as reader:
        assert reader.num_frames == 12 and reader.fps == pytest.approx(12)
        got = reader.get_frames(range(12)).astype(float)
    assert np.abs(got - clip).mean() < 20  # lossy but the same picture


def test_generation_is_quick(tmp_path):
    start = time.perf_counter()
    info = make_action_dataset(tmp_path, num_classes=10, videos_per_class={"train": 2},
                               num_frames=16, size=(64, 64), fmt="avi")  # fmt: skip
    per_video = (time.perf_counter() - start) / sum(info["counts"].values())
    assert info["counts"] == {"train": 20, "val": 20, "test": 20}
    assert per_video < 0.2  # typically ~5 ms at 64 px
