"""Frame indices of clips: pure functions of (video length, options, rng), by the reference's
formulas (VideoMAE's `kinetics.py` / `ssv2.py` as used by APT).

Dense sampling (UCF101, HMDB51, Kinetics): `num_frames` T frames spread over T * r frames.
Segment sampling (SSv2): the video cut into T equal segments, one frame each.
`rng` is a `numpy.random.Generator` or a `random.Random`; `None` means evaluation (fixed).
Every random function has a pure twin taking the draw (`dense_clip_ending`,
`segment_clip_with`), so tests can enumerate every outcome.
"""

from __future__ import annotations

import random

import numpy as np

from .errors import DataError

Rng = np.random.Generator | random.Random
DENSE_DATASETS = ("Kinetics-400", "UCF101", "HMDB51", "image_folder")
SEGMENT_DATASETS = ("SSV2",)
SAMPLING_MODES = ("auto", "dense", "segment")


def sampling_mode(data_set: str, sampling: str = "auto") -> str:
    """'dense' or 'segment': from `data_set` as the reference does, unless forced."""
    if sampling not in SAMPLING_MODES:
        raise DataError(f"--sampling must be one of {SAMPLING_MODES}, got {sampling!r}")
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


# ---- dense: training (and the exact-stride clip pre-training uses) ----


def dense_clip_ending(
    num_video_frames: int, num_frames: int, sampling_rate: int, end: int | None
) -> list[int]:
    """The reference's dense train clip for a given draw `end` in [T*r, n), or for a short
    video (n <= T*r, `end` ignored).

    Long: `int(linspace(end - T*r, end, T))` clipped to [start, end - 1] (spacing T*r/(T-1),
    not r). Short: `linspace(0, n, n // r)` padded with n up to T, clipped to n - 1.
    """
    _check(num_video_frames, num_frames)
    n, span = num_video_frames, num_frames * sampling_rate
    if n <= span:
        index = np.linspace(0, n, num=n // sampling_rate)
        index = np.concatenate((index, np.full(num_frames - n // sampling_rate, float(n))))
        return np.clip(index, 0, n - 1).astype(np.int64).tolist()
    if end is None or not span <= end < n:
        raise ValueError(f"end must be in [{span}, {n}) for a {n}-frame video, got {end}")
    start = end - span
    index = np.linspace(start, end, num=num_frames)
    return np.clip(index, start, end - 1).astype(np.int64).tolist()


def dense_train_indices(
    num_video_frames: int, num_frames: int, sampling_rate: int, rng: Rng | None = None
) -> list[int]:
    """Dense clip: train (`rng`): `end` uniform in [T*r, n) as the reference's `randint`;
    val (`rng=None`): `end` in the middle of that range (our fixed, documented departure)."""
    n, span = num_video_frames, num_frames * sampling_rate
    if n <= span:
        return dense_clip_ending(n, num_frames, sampling_rate, None)
    end = span + (_randint(rng, n - span) if rng is not None else (n - 1 - span) // 2)
    return dense_clip_ending(n, num_frames, sampling_rate, end)


def dense_indices(
    num_video_frames: int, num_frames: int, sampling_rate: int, rng: Rng | None = None
) -> list[int]:
    """Exact-stride clip (frames `r` apart; VideoMAE pre-training's rule, not fine-tuning's).

    Train (`rng` given): random start in [0, n - span]; eval (`rng=None`): the centred clip.
    A video shorter than the span starts at 0 and is padded by repeating its last frame.
    """
    _check(num_video_frames, num_frames)
    room = num_video_frames - num_frames * sampling_rate  # free frames around the clip
    if room <= 0:
        start = 0
    elif rng is None:
        start = room // 2
    else:
        start = _randint(rng, room + 1)
    last = num_video_frames - 1
    return [min(start + i * sampling_rate, last) for i in range(num_frames)]


# ---- dense: test views ----


def dense_test_buffer(num_video_frames: int, num_frames: int, sampling_rate: int) -> list[int]:
    """Frames 0, r, 2r, ... below n, padded with the last up to T: the reference's test buffer."""
    _check(num_video_frames, num_frames)
    buffer = list(range(0, num_video_frames, sampling_rate))
    return buffer + [buffer[-1]] * max(num_frames - len(buffer), 0)


def dense_test_views(
    num_video_frames: int, num_frames: int, sampling_rate: int, test_num_segment: int
) -> list[list[int]]:
    """Clip k = `buffer[int(k*step) : int(k*step) + T]`, `step = max((B - T)/(S - 1), 0)`,
    so every index is a multiple of r. S = 1 (the reference divides by zero): centred."""
    buffer = dense_test_buffer(num_video_frames, num_frames, sampling_rate)
    room = len(buffer) - num_frames
    if test_num_segment == 1:
        starts = [room // 2]
    else:
        step = max(room / (test_num_segment - 1), 0)
        starts = [int(k * step) for k in range(test_num_segment)]
    return [buffer[s : s + num_frames] for s in starts]


# ---- segment (SSv2) ----


def segment_clip_with(num_video_frames: int, num_frames: int, draws: list[int]) -> list[int]:
    """The reference's segment train clip for given draws: `x*avg + draws[x]` with each draw
    in [0, avg), avg = n // T; a video shorter than T (avg 0) gives T copies of frame 0."""
    _check(num_video_frames, num_frames)
    avg = num_video_frames // num_frames
    if avg > 0:
        return [x * avg + int(d) for x, d in enumerate(draws)]
    return [0] * num_frames


def segment_train_indices(
    num_video_frames: int, num_frames: int, rng: Rng | None = None
) -> list[int]:
    """Segment clip: train (`rng`): a uniform frame of each `n // T`-frame chunk; the
    reference's `elif n > T` branch is unreachable (avg > 0 whenever n >= T), so a video
    shorter than T gives T copies of frame 0. Val (`rng=None`): segment centres."""
    _check(num_video_frames, num_frames)
    if rng is None:
        return segment_indices(num_video_frames, num_frames)
    avg = num_video_frames // num_frames
    draws = [_randint(rng, avg) for _ in range(num_frames)] if avg > 0 else []
    return segment_clip_with(num_video_frames, num_frames, draws)


def segment_indices(num_video_frames: int, num_frames: int, offset: float = 0.5) -> list[int]:
    """Frame `int(tick * (i + offset))` of each segment, `tick = n / T` (val: offset 1/2)."""
    _check(num_video_frames, num_frames)
    tick = num_video_frames / num_frames
    return [min(int(tick * (i + offset)), num_video_frames - 1) for i in range(num_frames)]


def segment_test_views(
    num_video_frames: int, num_frames: int, test_num_segment: int
) -> list[list[int]]:
    """S = 2 (the reference's SSv2 test): `sorted([int(tick*x + tick/2)] + [int(tick*x)])`,
    clip k = every second entry from k. Other S (not defined there): offsets k / S."""
    _check(num_video_frames, num_frames)
    if test_num_segment != 2:
        return [
            segment_indices(num_video_frames, num_frames, offset=k / test_num_segment)
            for k in range(test_num_segment)
        ]
    tick = num_video_frames / num_frames
    both = [int(tick / 2.0 + tick * x) for x in range(num_frames)]
    both += [int(tick * x) for x in range(num_frames)]
    both.sort()
    return [both[0::2], both[1::2]]


# ---- dispatch ----


def clip_indices(
    mode: str,
    num_video_frames: int,
    num_frames: int,
    sampling_rate: int,
    rng: Rng | None = None,
) -> list[int]:
    """Train (`rng`) or validation (`rng=None`, one fixed centred view) clip for `mode`."""
    if mode == "segment":
        return segment_train_indices(num_video_frames, num_frames, rng)
    return dense_train_indices(num_video_frames, num_frames, sampling_rate, rng)


def all_test_views(
    mode: str, num_video_frames: int, num_frames: int, sampling_rate: int, test_num_segment: int
) -> list[list[int]]:
    """All `test_num_segment` temporal views of a video for `mode`."""
    if mode == "segment":
        return segment_test_views(num_video_frames, num_frames, test_num_segment)
    return dense_test_views(num_video_frames, num_frames, sampling_rate, test_num_segment)


def crop_starts(length: int, crop: int, num_crops: int) -> list[int]:
    """Starts of `num_crops` crops along `length`: `int(j * (length - crop) / (num_crops - 1))`
    as the reference's test crops; one crop is centred with `round`, as its CenterCrop."""
    room = max(length - crop, 0)
    if num_crops == 1:
        return [int(round(room / 2))]
    return [int(j * room / (num_crops - 1)) for j in range(num_crops)]


def is_short(mode: str, num_video_frames: int, num_frames: int, sampling_rate: int) -> bool:
    """True when a clip of `mode` repeats frames because the video is too short."""
    need = num_frames if mode == "segment" else num_frames * sampling_rate
    return num_video_frames < need
