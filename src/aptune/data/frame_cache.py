"""Decode-once cache: all frames of a video stored raw (``.npy``) the first time it is read.

Why: on small or low-resolution data (the demo's 64-px clips) decoding a video costs more
than the model step on it. With ``--decode_cache DIR`` each video is decoded once per
cache folder; every later epoch, run and data-loading process reads the frames back
through a memory map. Disk cost: frames x H x W x 3 bytes per video (196 KB for a
16-frame 64-px demo video; a 10 s 320x240 clip at 25 fps is 58 MB, so use it for small
or down-scaled datasets only).

An entry is keyed by the video's absolute path, size and modification time, so a replaced
video is decoded again. It is written under a temporary name and renamed, so a killed run
never leaves a half-written entry. If an entry cannot be written (disk full) the frames are
still returned, uncached, with a warning.

Entries cannot lie: each ends with a 16-byte footer (``FOOTER_MAGIC`` + the CRC-32 of every
byte before it) written in the same file, so entry and checksum appear together or not at
all. Every open re-computes the CRC (about 4 GB/s: 0.05 ms for a demo video; see
``benchmarks/bench_decode_cache.py``). A mismatch (bytes flipped on disk, same size), an
unreadable entry or one written by an earlier aptune without a footer is logged once per
entry, naming the video and the file, and the video is decoded again and the entry
rewritten. ``np.load`` ignores the footer (it reads only the array's bytes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import uuid
import zlib
from pathlib import Path
from stat import S_ISREG

import numpy as np

from .decode import VideoReader, open_video
from .errors import DataError

log = logging.getLogger("aptune.data")

FOOTER_MAGIC = b"aptcrc1\n"  # 8 bytes, then the CRC-32 as 8 little-endian bytes
FOOTER = struct.Struct("<8sQ")


class _CrcWriter:
    """File wrapper that CRCs what ``np.save`` writes, so the entry is never read back."""

    def __init__(self, f) -> None:
        self.f, self.crc = f, 0

    def write(self, data) -> int:
        self.crc = zlib.crc32(data, self.crc)
        return self.f.write(data)


def entry_checksum(entry: Path) -> tuple[int, int | None]:
    """(CRC-32 of the bytes before the footer, CRC the footer holds or None without one)."""
    size = entry.stat().st_size
    if size < FOOTER.size:
        return 0, None
    raw = np.memmap(entry, dtype=np.uint8, mode="r")  # no copy: one pass over the pages
    magic, stored = FOOTER.unpack(bytes(raw[-FOOTER.size :]))
    if magic != FOOTER_MAGIC:
        return 0, None
    return zlib.crc32(memoryview(raw[: -FOOTER.size])), stored


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
        self._warned: set[Path] = set()  # entries already named in a warning (once each)
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
        frames = self._load(entry, path)
        if frames is None:
            with open_video(path, backend) as reader:
                frames = reader.get_frames(range(reader.num_frames))
            self._store(entry, frames)
        return CachedVideo(path, frames)

    def _load(self, entry: Path, video: str) -> np.ndarray | None:
        """The entry's frames if its CRC matches; else None (logged once, entry removed)."""
        if not entry.is_file():
            return None
        try:
            actual, stored = entry_checksum(entry)
            if stored is None:
                raise ValueError("no checksum (written by an earlier aptune)")
            if actual != stored:
                raise ValueError(f"checksum differs: crc32 {actual:08x}, stored {stored:08x}")
            frames = np.load(entry, mmap_mode="r", allow_pickle=False)
            if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
                raise ValueError(f"unexpected array {frames.dtype} {frames.shape}")
            return frames
        except (OSError, ValueError) as exc:
            self._warn_once(entry, f"decode cache entry {entry} of {video} is unreadable "
                                   f"({exc}): decoding again")  # fmt: skip
            entry.unlink(missing_ok=True)
            return None

    def _warn_once(self, entry: Path, message: str) -> None:
        """One line per fault of an entry: a failing rewrite must not repeat it every clip."""
        if entry not in self._warned:
            self._warned.add(entry)
            log.warning("%s", message)

    def _store(self, entry: Path, frames: np.ndarray) -> None:
        tmp = entry.with_name(f"{entry.stem}.{uuid.uuid4().hex}.tmp")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                out = _CrcWriter(f)
                np.save(out, np.ascontiguousarray(frames), allow_pickle=False)
                f.write(FOOTER.pack(FOOTER_MAGIC, out.crc))
            os.replace(tmp, entry)  # entry and its checksum appear together
            self._warned.discard(entry)  # sound again: a later fault is news
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            if not self._write_failed:
                self._write_failed = True
                log.warning("decode cache %s: cannot write (%s); going on uncached",
                            self.folder, exc)  # fmt: skip
