"""Synthetic action videos in real containers/codecs, and a labelled dataset of them.

A coloured bar with a marker moves over a calm textured background; the class is the motion, so
temporal order matters and a horizontal flip swaps classes (left <-> right, cw <-> ccw).
Used by `aptune demo`, the demo backbone's pre-training data, the benchmarks and the tests:
videos are real .avi/mpeg4, .mp4/h264 and .webm/vp9 files encoded with PyAV, so every
decoder path runs on them. Folders laid out like the real downloads serve only the tests
and live with them (``tests/data/download_layouts.py``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .lists import write_class_names, write_video_list

MOTION_CLASSES = [
    "move_left", "move_right", "move_up", "move_down", "rotate_cw",
    "rotate_ccw", "grow", "shrink", "move_up_left", "move_down_right",
]  # fmt: skip
# (dx, dy, rotation, scale change) over the whole clip, in units of the frame size / radians
_MOTION = {
    "move_left": (-0.5, 0, 0, 0), "move_right": (0.5, 0, 0, 0), "move_up": (0, -0.5, 0, 0),
    "move_down": (0, 0.5, 0, 0), "rotate_cw": (0, 0, 1.6, 0), "rotate_ccw": (0, 0, -1.6, 0),
    "grow": (0, 0, 0, 1.0), "shrink": (0, 0, 0, -0.6), "move_up_left": (-0.4, -0.4, 0, 0),
    "move_down_right": (0.4, 0.4, 0, 0),
}  # fmt: skip
CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264"}
_CODEC_OPTIONS = {
    "mpeg4": {"qscale": "4"},
    "libx264": {"preset": "ultrafast", "crf": "23"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"},
}


def make_clip(
    class_index: int, num_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """uint8 (T, H, W, 3) clip of class `class_index` (motion = MOTION_CLASSES[index % 10])."""
    height, width = size
    dx, dy, rot, grow = _MOTION[MOTION_CLASSES[class_index % len(MOTION_CLASSES)]]
    t = np.linspace(0.0, 1.0, num_frames)[:, None, None]  # (T, 1, 1)
    cx = width * (0.5 - dx / 2 + dx * t + rng.uniform(-0.08, 0.08))
    cy = height * (0.5 - dy / 2 + dy * t + rng.uniform(-0.08, 0.08))
    angle = rng.uniform(0, np.pi) + rot * t
    half = min(height, width) * rng.uniform(0.2, 0.28) * (1 + grow * (t - (grow < 0)))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)  # (T, H, W) bar coordinates
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    bar = (np.abs(u) <= half) & (np.abs(v) <= half * 0.35)
    marker = (np.abs(u - half * 0.8) <= half * 0.3) & (np.abs(v) <= half * 0.6)
    # calm, low-contrast blocky texture: the moving object, not the background, carries
    # the class (a busy background makes the demo's tiny models learn the wrong thing)
    base = rng.uniform(60, 120)
    coarse = base + rng.uniform(-15, 15, (height // 16 + 1, width // 16 + 1, 3))
    background = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    video = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    video += rng.normal(0, 4, (num_frames, height, width, 1))
    hue = rng.permutation([255.0, rng.uniform(0, 255), 30.0])  # a saturated colour
    video[bar] = hue
    video[marker] = 255.0 - hue
    return np.clip(video, 0, 255).astype(np.uint8)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25,
    codec: str | None = None,
    gop: int = 12,
) -> Path:
    """Encode uint8 (T, H, W, 3) frames (even H, W) with PyAV; codec from the extension."""
    import av

    path = Path(path)
    codec = codec or CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"no default codec for {path.suffix!r}; pass codec=")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.options = dict(_CODEC_OPTIONS.get(codec, {}))
        stream.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def motion_class_names(num_classes: int) -> list[str]:
    """Class names of `num_classes` motions: the motion names, with a numeric suffix once
    the ten are used up (make_clip's class i is motion i % 10)."""
    if num_classes <= len(MOTION_CLASSES):
        return MOTION_CLASSES[:num_classes]
    return [f"{MOTION_CLASSES[i % len(MOTION_CLASSES)]}_{i}" for i in range(num_classes)]


def make_action_dataset(
    root: str | os.PathLike,
    num_classes: int = 4,
    videos_per_class: dict[str, int] | None = None,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 64),
    fmt: str = "mp4",
    seed: int = 0,
    fps: float = 25,
) -> dict:
    """Videos `root/videos/<split>/<class>/<n>.<fmt>` + VideoMAE lists with absolute paths."""
    root = Path(root).resolve()
    per = {"train": 4, "val": 2, "test": 2, **(videos_per_class or {})}
    classes = motion_class_names(num_classes)
    rng = np.random.default_rng(seed)
    out: dict = {"root": str(root), "classes": classes, "counts": {}, "lists": {}}
    for split, n in per.items():
        entries = []
        for label, name in enumerate(classes):
            for k in range(n):
                path = root / "videos" / split / name / f"{k:03d}.{fmt.lstrip('.')}"
                write_video(path, make_clip(label, num_frames, size, rng), fps)
                entries.append((str(path), label))
        list_file = root / f"{split}.csv"
        write_video_list(list_file, entries)
        out["counts"][split] = len(entries)
        out["lists"][split] = str(list_file)
    write_class_names(root / "classes.txt", classes)
    out["data_path"] = str(root)
    return out
