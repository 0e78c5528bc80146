"""Datasets for train / val / test views and the batch type the engine consumes.

List problems fail in `build_dataset` (before training). During training an unreadable
video becomes a `SkippedItem` that `collate_clips` drops and reports in `Batch.skipped`
(never replaced by another video); `strict_data=True` raises instead. Val/test always raise:
evaluation must not lose samples silently.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .decode import BACKENDS, open_video, resolve_backend
from .device_augment import RawBatch, RawClipItem, collate_raw
from .errors import DataError, VideoDecodeError
from .frame_cache import FrameCache
from .lists import VideoEntry, parse_video_list, read_class_names, scan_class_folder
from .sampling import SAMPLING_MODES, all_test_views, clip_indices, is_short, sampling_mode
from .transforms import EvalTransform, TrainTransform

log = logging.getLogger("aptune.data")
DATA_SETS = ("Kinetics-400", "SSV2", "UCF101", "HMDB51", "image_folder")
SPLITS = ("train", "val", "test")
_POSITIVE = ("nb_classes", "num_frames", "sampling_rate", "tubelet_size", "input_size")
_POSITIVE += ("short_side_size", "num_sample", "test_num_segment", "test_num_crop")


@dataclass
class DataConfig:
    """Data options; names and defaults follow the reference's command-line flags."""

    data_set: str = "Kinetics-400"  # Kinetics-400 | SSV2 | UCF101 | HMDB51 | image_folder
    data_path: str = ""  # folder with train.csv / val.csv / test.csv
    eval_data_path: str | None = None  # folder for val/test lists if different
    data_root: str = ""  # prefix for relative video paths in lists
    nb_classes: int = 400
    num_frames: int = 16
    sampling_rate: int = 4
    tubelet_size: int = 2
    input_size: int = 224
    short_side_size: int = 224
    num_sample: int = 1
    test_num_segment: int = 5
    test_num_crop: int = 3
    aa: str = "rand-m7-n4-mstd0.5-inc1"
    is_aa: bool = False  # RandAugment only with --is_aa, as in the APT reference
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    train_interpolation: str = "bicubic"
    sampling: str = "auto"  # auto | dense | segment
    flip: bool | None = None  # None -> False for SSV2, True otherwise
    backend: str = "auto"  # auto | pyav | decord | frames
    strict_data: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)  # random resized crop area (reference)
    decode_cache: str | None = None  # folder: decode each video once (see frame_cache)
    defer_augment: bool = False  # train items: decoded frames + plans (--aug_device)

    def __post_init__(self) -> None:
        choices = {"data_set": DATA_SETS, "sampling": SAMPLING_MODES, "backend": BACKENDS}
        choices["remode"] = ("pixel", "rand", "const")
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DataError(f"--{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in _POSITIVE:
            if int(getattr(self, name)) < 1:
                raise DataError(f"--{name} must be >= 1, got {getattr(self, name)}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise DataError(f"--crop_scale needs 0 < min <= max <= 1, got {lo} {hi}")
        if not 0.0 <= self.reprob <= 1.0:
            raise DataError(f"--reprob must be in [0, 1], got {self.reprob}")
        if self.num_frames % self.tubelet_size:
            raise DataError(
                f"--num_frames {self.num_frames} must be a multiple of --tubelet_size "
                f"{self.tubelet_size}"
            )

    @property
    def mode(self) -> str:
        return sampling_mode(self.data_set, self.sampling)

    @property
    def use_flip(self) -> bool:
        return self.data_set != "SSV2" if self.flip is None else bool(self.flip)


@dataclass
class ClipItem:
    clips: torch.Tensor  # (S, 3, T, H, W): S = num_sample in train, else 1
    label: int
    video_index: int
    view_index: int


@dataclass
class SkippedItem:
    path: str
    reason: str
    video_index: int
    clip_shape: tuple[int, int, int, int]  # (3, T, H, W), so an all-skipped batch has a shape


@dataclass
class Batch:
    clips: torch.Tensor  # (B, 3, T, H, W) float32; B*S rows with num_sample S > 1
    labels: torch.Tensor  # (B,) int64, one per row
    video_index: torch.Tensor  # (B,) int64: row of the list file
    view_index: torch.Tensor  # (B,) int64: 0 for train/val; segment*test_num_crop+crop for test
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)

    def __len__(self) -> int:
        return self.clips.shape[0]

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True)."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn) -> Batch:
        return Batch(
            fn(self.clips), fn(self.labels), fn(self.video_index), fn(self.view_index),
            list(self.skipped),
        )  # fmt: skip


def collate_clips(items: list[ClipItem | RawClipItem | SkippedItem]) -> Batch | RawBatch:
    """Stack clips (S per item -> S rows), drop skipped items and report them. Items of a
    deferred-augmentation dataset make a :class:`RawBatch` for ``DeviceAugment``."""
    if any(isinstance(it, RawClipItem) for it in items):
        return collate_raw(items)
    good = [it for it in items if isinstance(it, ClipItem)]
    skipped = [(it.path, it.reason) for it in items if isinstance(it, SkippedItem)]
    if not good:
        shape = next(it.clip_shape for it in items if isinstance(it, SkippedItem))
        empty = torch.zeros(0, dtype=torch.int64)
        return Batch(torch.zeros((0, *shape)), empty, empty.clone(), empty.clone(), skipped)
    repeats = torch.tensor([it.clips.shape[0] for it in good])

    def per_row(values: list[int]) -> torch.Tensor:
        return torch.repeat_interleave(torch.tensor(values, dtype=torch.int64), repeats)

    return Batch(
        clips=torch.cat([it.clips for it in good]),
        labels=per_row([it.label for it in good]),
        video_index=per_row([it.video_index for it in good]),
        view_index=per_row([it.view_index for it in good]),
        skipped=skipped,
    )


class VideoClipDataset(Dataset):
    """Clips of the videos in a list; test split: one item per (video, segment, crop) view."""

    def __init__(
        self,
        split: str,
        cfg: DataConfig,
        entries: list[VideoEntry],
        class_names: list[str] | None = None,
        source: str = "",
    ) -> None:
        self.split, self.cfg, self.entries, self.source = split, cfg, entries, source
        self.class_names = class_names
        self.mode = cfg.mode
        self.train_transform = TrainTransform(
            cfg.input_size, cfg.use_flip, cfg.aa if cfg.is_aa else None,
            cfg.train_interpolation, cfg.reprob, cfg.remode, cfg.recount,
            tuple(cfg.crop_scale),
        )  # fmt: skip
        crops = cfg.test_num_crop if split == "test" else 1
        self.eval_transform = EvalTransform(cfg.input_size, cfg.short_side_size, crops)
        self.views_per_video = cfg.test_num_segment * cfg.test_num_crop if split == "test" else 1
        self._cache: tuple[int, int, torch.Tensor] | None = None  # (video, segment, resized)
        self._warned_short: set[str] = set()
        self.frame_cache = FrameCache(cfg.decode_cache) if cfg.decode_cache else None

    @property
    def video_paths(self) -> list[str]:
        return [e.path for e in self.entries]

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries) * self.views_per_video

    def __getitem__(self, index: int) -> ClipItem | RawClipItem | SkippedItem:
        video, view = divmod(int(index), self.views_per_video)
        entry = self.entries[video]
        try:
            if self.split == "train" and self.cfg.defer_augment:
                return self._load_raw(video, entry)
            clips = self._load(video, view, entry)
        except VideoDecodeError as exc:
            if self.split != "train" or self.cfg.strict_data:
                raise
            log.warning("skipped unreadable video (%s): %s", self.source, exc)
            shape = (3, self.cfg.num_frames, self.cfg.input_size, self.cfg.input_size)
            return SkippedItem(entry.path, str(exc), video, shape)
        return ClipItem(clips, entry.label, video, view)

    def _load(self, video: int, view: int, entry: VideoEntry) -> torch.Tensor:
        cfg = self.cfg
        if self.split == "test":
            segment, crop = divmod(view, cfg.test_num_crop)
            if self._cache is None or self._cache[:2] != (video, segment):
                frames = self._read(entry, segment)
                self._cache = (video, segment, self.eval_transform.resize(frames))
            return self.eval_transform.view(self._cache[2], crop)[None]
        if self.split == "val":
            resized = self.eval_transform.resize(self._read(entry, None))
            return self.eval_transform.view(resized, 0)[None]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        frames = self._read(entry, None, rng)
        # one decode, num_sample independent augmentations (the reference's repeated aug)
        return torch.stack([self.train_transform(frames, rng) for _ in range(cfg.num_sample)])

    def _load_raw(self, video: int, entry: VideoEntry) -> RawClipItem:
        """Decode only; the clips' random choices travel as plans (the same draws, in the
        same order, as `_load`), applied on the training device by ``DeviceAugment``."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))
        frames = self._read(entry, None, rng)
        t, height, width, _ = frames.shape
        plans = [self.train_transform.plan(t, height, width, rng, ops=True)
                 for _ in range(self.cfg.num_sample)]  # fmt: skip
        # get_frames returns a fresh array (also from the cache's memory map): no copy here
        size = self.cfg.input_size
        shape = (3, self.cfg.num_frames, size, size)
        return RawClipItem(torch.from_numpy(frames), plans, entry.label, video, shape)

    def _read(
        self, entry: VideoEntry, segment: int | None, rng: np.random.Generator | None = None
    ) -> np.ndarray:
        cfg = self.cfg
        if self.frame_cache is not None:
            opened = self.frame_cache.open(entry.path, cfg.backend)
        else:
            opened = open_video(entry.path, cfg.backend)
        with opened as reader:
            n = reader.num_frames
            if segment is None:
                indices = clip_indices(self.mode, n, cfg.num_frames, cfg.sampling_rate, rng)
            else:
                views = all_test_views(
                    self.mode, n, cfg.num_frames, cfg.sampling_rate, cfg.test_num_segment
                )
                indices = views[segment]
            if is_short(self.mode, n, cfg.num_frames, cfg.sampling_rate):
                self._note_short(entry.path, n)
            return reader.get_frames(indices)

    def _note_short(self, path: str, n: int) -> None:
        if path not in self._warned_short:
            self._warned_short.add(path)
            log.info(
                "video %s has %d frames, shorter than one clip (%d x rate %d): padded by "
                "repeating its last frame", path, n, self.cfg.num_frames, self.cfg.sampling_rate,
            )  # fmt: skip


def _list_entries(split: str, cfg: DataConfig) -> tuple[list[VideoEntry], Path]:
    """Entries of `<dir>/<split>.csv`; for image_folder without lists, scan class folders."""
    folder = Path(cfg.data_path if split == "train" else (cfg.eval_data_path or cfg.data_path))
    list_file = folder / f"{split}.csv"
    if cfg.data_set == "image_folder" and not list_file.is_file():
        root = folder / split if (folder / split).is_dir() else folder
        _, items = scan_class_folder(root)
        entries = [VideoEntry(str(root / p), lb, n) for n, (p, lb) in enumerate(items, 1)]
        for e in entries:
            if e.label >= cfg.nb_classes:
                raise DataError(
                    f"{root}: {e.label + 1}+ class folders but --nb_classes {cfg.nb_classes}; "
                    "set --nb_classes to the number of class folders"
                )
        return entries, root
    if not list_file.is_file():
        flag = "--data_path" if split == "train" else "--eval_data_path / --data_path"
        raise DataError(
            f"list file not found: {list_file}: check {flag} or write the lists with "
            "`aptune prepare`"
        )
    return parse_video_list(list_file, cfg.data_root, cfg.nb_classes), list_file


def build_dataset(split: str, cfg: DataConfig) -> VideoClipDataset:
    """The dataset of `split` ("train" | "val" | "test"); all list checks happen here."""
    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.backend == "decord":
        resolve_backend("", "decord")  # fail now if decord is forced but missing
    entries, source = _list_entries(split, cfg)
    if not entries:
        raise DataError(f"{source}: no videos listed for split {split!r}")
    class_names = None
    classes_file = (source.parent if source.is_file() else source) / "classes.txt"
    if classes_file.is_file():
        class_names = read_class_names(classes_file)
        if len(class_names) != cfg.nb_classes:
            raise DataError(
                f"{classes_file}: {len(class_names)} classes but --nb_classes is "
                f"{cfg.nb_classes}: set --nb_classes {len(class_names)} (or fix classes.txt)"
            )
    missing = [e for e in entries if not os.path.exists(e.path)]
    if missing:
        first = ", ".join(f"{e.path} (line {e.line})" for e in missing[:3])
        raise DataError(
            f"{source}: {len(missing)} of {len(entries)} listed videos are missing on disk, "
            f"first: {first}; check --data_root or re-run `aptune prepare`"
        )
    return VideoClipDataset(split, cfg, entries, class_names, str(source))
