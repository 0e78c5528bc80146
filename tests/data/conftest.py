"""Session fixtures: tiny real video files (each container/codec), frame folders, datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from download_layouts import (
    make_hmdb51_layout,
    make_ssv2_layout,
    make_ucf101_layout,
    write_frames,
)

from aptune.data import synthetic

NUM_FRAMES = 48  # frames of the index-coded videos
FPS = 25
GOP = 12  # keyframes at 0, 12, 24, 36
FORMATS = Path(__file__).resolve().parents[2].parent / "shared" / "formats"


def frame_index(frame: np.ndarray) -> int:
    """Index written by `coded_frames`: 6 bits as black/white 8x8 blocks in the top row."""
    bits = [frame[:8, 8 * b : 8 * b + 8].mean() > 128 for b in range(6)]
    return sum(int(bit) << b for b, bit in enumerate(bits))


@pytest.fixture(scope="session")
def coded_frames() -> np.ndarray:
    """Frames carrying their own index (robust to lossy compression), 32x64."""
    frames = np.full((NUM_FRAMES, 32, 64, 3), 90, dtype=np.uint8)
    for i in range(NUM_FRAMES):
        for b in range(6):
            frames[i, :8, 8 * b : 8 * b + 8] = 255 if (i >> b) & 1 else 0
    return frames


@pytest.fixture(scope="session")
def coded_videos(tmp_path_factory, coded_frames) -> dict[str, Path]:
    """One index-coded video per container: .avi/mpeg4, .mp4/h264, .webm/vp9."""
    root = tmp_path_factory.mktemp("coded")
    return {
        ext: synthetic.write_video(root / f"video.{ext}", coded_frames, FPS, gop=GOP)
        for ext in ("avi", "mp4", "webm")
    }


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory, coded_frames) -> Path:
    return write_frames(tmp_path_factory.mktemp("frames") / "video1", coded_frames[:10])


@pytest.fixture(scope="session")
def action_data(tmp_path_factory) -> dict:
    """3 classes x (2 train, 1 val, 1 test) mp4 videos of 24 frames, VideoMAE lists."""
    return synthetic.make_action_dataset(
        tmp_path_factory.mktemp("action"),
        num_classes=3,
        videos_per_class={"train": 2, "val": 1, "test": 1},
        num_frames=24,
        size=(48, 64),
        fmt="mp4",
    )


@pytest.fixture(scope="session")
def bad_videos(tmp_path_factory) -> dict[str, Path]:
    """A zero-length file, random bytes named .mp4, and a missing path."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty.mp4").write_bytes(b"")
    (root / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return {
        "empty": root / "empty.mp4",
        "corrupt": root / "corrupt.mp4",
        "missing": root / "missing.mp4",
    }


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, dict]:
    """Directories laid out like the real UCF101 / HMDB51 / SSv2 downloads."""
    root = tmp_path_factory.mktemp("layouts")
    small = {"num_classes": 3, "num_frames": 8, "size": (32, 40)}
    return {
        "ucf101": make_ucf101_layout(root / "ucf101", **small),
        "hmdb51": make_hmdb51_layout(root / "hmdb51", **small),
        "ssv2": make_ssv2_layout(root / "ssv2", **small),
    }


@pytest.fixture
def formats() -> Path:
    if not FORMATS.is_dir():
        pytest.skip(f"real format excerpts not found at {FORMATS}")
    return FORMATS
