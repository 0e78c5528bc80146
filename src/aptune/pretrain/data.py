"""Unlabelled clips for pre-training: any list file or any folder of videos.

Self-supervised data needs no labels, so ``--data_path`` may be a VideoMAE list
(``train.csv``, label column optional) or simply a folder scanned recursively. Items are the
fine-tuning pipeline's ``ClipItem`` / ``SkippedItem`` so ``collate_clips``, ``EpochLoader``
and the engine's skip accounting work unchanged. The augmentation is VideoMAE's minimum:
one random resized crop per clip (area 50-100%, in place of its multi-scale crop),
optionally a horizontal flip - masking is the real regulariser.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from aptune.data.datasets import ClipItem, SkippedItem
from aptune.data.decode import open_video
from aptune.data.errors import DataError, VideoDecodeError
from aptune.data.lists import VIDEO_EXTENSIONS
from aptune.data.sampling import dense_indices
from aptune.data.transforms import normalize, sample_crop_box

log = logging.getLogger("aptune")
LIST_NAMES = ("train.csv", "train.txt")


def read_unlabelled_list(path: Path, data_root: str = "") -> list[str]:
    """Video paths of a list file; a trailing integer label on a line is ignored.

    Relative paths are joined to ``data_root``, else to the list's folder.
    """
    root = data_root or str(path.parent)
    videos = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        video = parts[0] if len(parts) == 2 and parts[1].lstrip("-").isdigit() else line
        videos.append(video if os.path.isabs(video) else os.path.join(root, video))
    return videos


def find_videos(data_path: str, data_root: str = "") -> tuple[list[str], str]:
    """-> (video paths, description of where they came from); DataError if none."""
    p = Path(data_path).expanduser()
    if not data_path or not p.exists():
        raise DataError(f"--data_path {data_path!r}: no such file or folder")
    lists = [p] if p.is_file() else [p / n for n in LIST_NAMES if (p / n).is_file()]
    if lists:
        videos, source = read_unlabelled_list(lists[0], data_root), str(lists[0])
        missing = [v for v in videos if not os.path.exists(v)]
        if missing:
            raise DataError(
                f"{source}: {len(missing)} of {len(videos)} listed videos are missing, first "
                f"{missing[0]}; check --data_root"
            )
    else:
        videos = sorted(
            str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_EXTENSIONS and f.is_file()
        )
        source = f"{p} (folder scanned for {', '.join(VIDEO_EXTENSIONS)})"
    if not videos:
        raise DataError(f"{source}: no videos found for pre-training")
    return videos, source


class UnlabelledClips(Dataset):
    """One augmented clip (1, 3, T, S, S) per video per epoch; label is always 0."""

    def __init__(
        self,
        videos: list[str],
        num_frames: int,
        sampling_rate: int,
        input_size: int,
        flip: bool = False,
        scale: tuple[float, float] = (0.5, 1.0),
        backend: str = "auto",
        strict: bool = False,
    ) -> None:
        self.videos, self.num_frames, self.sampling_rate = videos, num_frames, sampling_rate
        self.input_size, self.flip, self.scale = input_size, flip, scale
        self.backend, self.strict = backend, strict

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> ClipItem | SkippedItem:
        # numpy rng from torch's stream: worker seeds come from EpochLoader's generator
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        path = self.videos[index]
        try:
            with open_video(path, self.backend) as reader:
                idx = dense_indices(reader.num_frames, self.num_frames, self.sampling_rate, rng)
                frames = reader.get_frames(idx)  # (T, H, W, 3) uint8
        except VideoDecodeError as exc:
            if self.strict:
                raise
            log.warning("skipped unreadable video: %s", exc)
            shape = (3, self.num_frames, self.input_size, self.input_size)
            return SkippedItem(path, str(exc), index, shape)
        return ClipItem(self.augment(frames, rng)[None], 0, index, 0)

    def augment(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        """Same random resized crop (and flip) for every frame -> normalised (3, T, S, S)."""
        _, height, width, _ = frames.shape
        box = sample_crop_box(height, width, self.input_size, rng, scale=self.scale)
        flip = self.flip and rng.random() < 0.5
        size = (self.input_size, self.input_size)
        bilinear = Image.Resampling.BILINEAR
        images = [Image.fromarray(f).resize(size, bilinear, box=box) for f in frames]
        if flip:
            images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
        return normalize(np.stack([np.asarray(im) for im in images]))


__all__ = ["UnlabelledClips", "find_videos", "read_unlabelled_list"]
