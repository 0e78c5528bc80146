"""Decode-once cache: all frames of a video stored raw (``.npy``) the first time it is read.

Why: on small or low-resolution data (the demo's 64-px clips) decoding a video costs more
than the model step on it. With ``--decode_cache DIR`` each video is decoded once per
cache folder; every later epoch, run and data-loading process reads the frames back
through a memory map. Disk cost: frames x H x W x 3 bytes per video (196 KB for a
16-frame 64-px demo video; a 10 s 320x240 clip at 25 fps is 58 MB, so use it for small
or down-scaled datasets only).

An entry is keyed by the video's absolute path, size and modification time, so a replaced
video is decoded again. It is written under a temporary name and renamed, so a killed run
never leaves a half-written entry; an unreadable entry is deleted and decoded again. If an
entry cannot be written (disk full) the frames are still returned, uncached, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path
from stat import S_ISREG

import numpy as np

from .decode import VideoReader, open_video
from .errors import DataError

log = logging.getLogger("aptune.data")


class CachedVideo(VideoReader):
    """A video whose frames are already decoded (memory-mapped from the cache)."""

    def __init__(self, path: str, frames: np.ndarray) -> None:
        self.path, self._frames = path, frames
        self.num_frames = int(frames.shape[0])
        self.fps = float("nan")  # not stored: nothing in training needs it

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        return {i: np.array(self._frames[i]) for i in wanted}


class FrameCache:
    """Folder of decoded videos shared by all workers, epochs and runs that name it."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser().resolve()
        self._write_failed = False
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataError(
                f"--decode_cache {folder}: cannot write there ({exc.strerror or exc}); "
                "choose a writable folder or drop the flag"
            ) from exc

    def entry_path(self, video: str | os.PathLike, stat: os.stat_result | None = None) -> Path:
        """Where the frames of ``video`` live; changes when the file is replaced or edited."""
        path = os.path.abspath(os.fspath(video))
        stat = stat or os.stat(path)
        key = f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()
        digest = hashlib.sha1(key, usedforsecurity=False).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npy"

    def open(self, video: str | os.PathLike, backend: str = "auto") -> VideoReader:
        """A reader over the cached frames of ``video``, decoding (and caching) it if needed.

        Folders of frames are read directly: they are decoded images already.
        """
        path = os.fspath(video)
        try:
            stat = os.stat(path)  # one stat per clip: it is also the cache key
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):
            return open_video(path, backend)  # missing file / frame folder: the usual path
        entry = self.entry_path(path, stat)
        frames = self._load(entry)
        if frames is None:
            with open_video(path, backend) as reader:
                frames = reader.get_frames(range(reader.num_frames))
            self._store(entry, frames)
        return CachedVideo(path, frames)

    def _load(self, entry: Path) -> np.ndarray | None:
        if not entry.is_file():
            return None
        try:
            frames = np.load(entry, mmap_mode="r", allow_pickle=False)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"unexpected array {frames.dtype} {frames.shape}")
            return frames
        except (OSError, ValueError) as exc:
            log.warning("decode cache entry %s is unreadable (%s): decoding again", entry, exc)
            entry.unlink(missing_ok=True)
            return None

    def _store(self, entry: Path, frames: np.ndarray) -> None:
        tmp = entry.with_name(f"{entry.stem}.{uuid.uuid4().hex}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(frames), allow_pickle=False)
            os.replace(tmp, entry)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._write_failed:
                self._write_failed = True
                log.warning("decode cache %s: cannot write (%s); going on uncached",
                            self.folder, exc)  # fmt: skip
