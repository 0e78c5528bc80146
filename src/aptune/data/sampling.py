"""Frame indices of clips: pure functions of (video length, options, rng).

Dense sampling (UCF101, HMDB51, Kinetics): `num_frames` frames `sampling_rate` apart.
Segment sampling (SSv2): the video cut into `num_frames` equal segments, one frame each.
`rng` is a `numpy.random.Generator` or a `random.Random`; `None` means evaluation (fixed).
"""

from __future__ import annotations

import random

import numpy as np

Rng = np.random.Generator | random.Random
DENSE_DATASETS = ("Kinetics-400", "UCF101", "HMDB51", "image_folder")
SEGMENT_DATASETS = ("SSV2",)
SAMPLING_MODES = ("auto", "dense", "segment")


def sampling_mode(data_set: str, sampling: str = "auto") -> str:
    """'dense' or 'segment': from `data_set` as the reference does, unless forced."""
    if sampling not in SAMPLING_MODES:
        raise ValueError(f"sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
    if sampling != "auto":
        return sampling
    return "segment" if data_set in SEGMENT_DATASETS else "dense"


def _randint(rng: Rng, high: int) -> int:
    """Uniform integer in [0, high) from either kind of generator."""
    if isinstance(rng, random.Random):
        return rng.randrange(high)
    return int(rng.integers(high))


def _check(num_video_frames: int, num_frames: int) -> None:
    if num_video_frames < 1:
        raise ValueError(f"video has {num_video_frames} frames; need at least 1")
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")


def _dense_from(start: int, num_video_frames: int, num_frames: int, rate: int) -> list[int]:
    """`num_frames` indices from `start`, `rate` apart; past the end repeats the last frame."""
    return [min(start + i * rate, num_video_frames - 1) for i in range(num_frames)]


def dense_indices(
    num_video_frames: int, num_frames: int, sampling_rate: int, rng: Rng | None = None
) -> list[int]:
    """One dense clip spanning `num_frames * sampling_rate` frames.

    Train (`rng` given): random start in [0, n - span]; eval (`rng=None`): the centred clip.
    A video shorter than the span starts at 0 and is padded by repeating its last frame.
    """
    _check(num_video_frames, num_frames)
    span = num_frames * sampling_rate
    room = num_video_frames - span  # free frames around the clip
    if room <= 0:
        start = 0
    elif rng is None:
        start = room // 2
    else:
        start = _randint(rng, room + 1)
    return _dense_from(start, num_video_frames, num_frames, sampling_rate)


def dense_test_views(
    num_video_frames: int, num_frames: int, sampling_rate: int, test_num_segment: int
) -> list[list[int]]:
    """`test_num_segment` dense clips with starts evenly spaced from the first to the last
    possible start (one view: the centred clip), as the reference's temporal test views."""
    _check(num_video_frames, num_frames)
    room = max(num_video_frames - num_frames * sampling_rate, 0)
    if test_num_segment == 1:
        starts = [room // 2]
    else:
        step = room / (test_num_segment - 1)
        starts = [int(k * step) for k in range(test_num_segment)]
    return [_dense_from(s, num_video_frames, num_frames, sampling_rate) for s in starts]


def segment_indices(
    num_video_frames: int, num_frames: int, rng: Rng | None = None, offset: float = 0.5
) -> list[int]:
    """One frame from each of `num_frames` equal segments (TSN/SSv2 sampling).

    Train: a random frame inside each segment of `n // num_frames` frames (the reference's
    rule); eval: frame `int(tick * (i + offset))` with `tick = n / num_frames`. Videos with
    fewer frames than segments repeat frames evenly (`int(i * n / num_frames)`).
    """
    _check(num_video_frames, num_frames)
    if num_video_frames < num_frames:
        return [i * num_video_frames // num_frames for i in range(num_frames)]
    if rng is None:
        tick = num_video_frames / num_frames
        return [min(int(tick * (i + offset)), num_video_frames - 1) for i in range(num_frames)]
    seg = num_video_frames // num_frames
    return [i * seg + _randint(rng, seg) for i in range(num_frames)]


def segment_test_views(
    num_video_frames: int, num_frames: int, test_num_segment: int
) -> list[list[int]]:
    """Segment views with fixed offsets `k / test_num_segment` of a segment, k = 0..S-1.

    For S=2 these are the reference's two SSv2 test clips (offset 0 and offset 1/2).
    """
    return [
        segment_indices(num_video_frames, num_frames, None, offset=k / test_num_segment)
        for k in range(test_num_segment)
    ]


def clip_indices(
    mode: str,
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    rng: Rng | None = None,
) -> list[int]:
    """Train (`rng`) or validation (`rng=None`, one centred view) clip for `mode`."""
    if mode == "segment":
        return segment_indices(num_video_frames, num_frames, rng)
    return dense_indices(num_video_frames, num_frames, sampling_rate, rng)


def all_test_views(
    mode: str, num_video_frames: int, num_frames: int, sampling_rate: int, test_num_segment: int
) -> list[list[int]]:
    """All `test_num_segment` temporal views of a video for `mode`."""
    if mode == "segment":
        return segment_test_views(num_video_frames, num_frames, test_num_segment)
    return dense_test_views(num_video_frames, num_frames, sampling_rate, test_num_segment)


def crop_starts(length: int, crop: int, num_crops: int) -> list[int]:
    """Starts of `num_crops` crops of size `crop` evenly spread over `length` (1: centred)."""
    room = max(length - crop, 0)
    if num_crops == 1:
        return [room // 2]
    return [int(j * room / (num_crops - 1)) for j in range(num_crops)]


def is_short(mode: str, num_video_frames: int, num_frames: int, sampling_rate: int) -> bool:
    """True when a clip of `mode` must repeat frames because the video is too short."""
    need = num_frames if mode == "segment" else (num_frames - 1) * sampling_rate + 1
    return num_video_frames < need
