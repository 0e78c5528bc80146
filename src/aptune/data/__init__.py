"""aptune.data: list files, decoding, sampling, clip transforms and datasets.

The engine uses `DataConfig`, `build_dataset`, `collate_clips`, `Batch` and, with
`--aug_device cuda`, `RawBatch` / `DeviceAugment`; everything else
is exposed for tools (prepare, benchmarks, tests).
"""

from .datasets import (
    Batch,
    ClipItem,
    DataConfig,
    SkippedItem,
    VideoClipDataset,
    build_dataset,
    collate_clips,
)
from .decode import VideoReader, decord_available, open_video, read_frames
from .device_augment import DeviceAugment, RawBatch, RawClipItem
from .errors import DataError, VideoDecodeError
from .lists import VideoEntry, parse_video_list, read_class_names, write_video_list

__all__ = [
    "Batch",
    "ClipItem",
    "DataConfig",
    "DataError",
    "DeviceAugment",
    "RawBatch",
    "RawClipItem",
    "SkippedItem",
    "VideoClipDataset",
    "VideoDecodeError",
    "VideoEntry",
    "VideoReader",
    "build_dataset",
    "collate_clips",
    "decord_available",
    "open_video",
    "parse_video_list",
    "read_class_names",
    "read_frames",
    "write_video_list",
]
