"""Video decoding behind one small interface: PyAV (default), decord (optional), JPEG folders.

`open_video(path, backend)` returns a reader with `num_frames`, `fps` and
`get_frames(indices) -> uint8 ndarray (T, H, W, 3)`. The PyAV reader demuxes packets once
(cheap: no decoding) to get the true frame count and presentation order even when the
container header lies or is silent (webm/vp9), then seeks to the keyframe before each run of
wanted frames and decodes forward only as far as the last wanted one.
"""

from __future__ import annotations

import bisect
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import VideoDecodeError

log = logging.getLogger("aptune.data")
BACKENDS = ("auto", "pyav", "decord", "frames")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def decord_available() -> bool:
    try:
        return importlib.util.find_spec("decord") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["decord"] = None to disable it
        return False


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise VideoDecodeError(f"video not found: {path}")
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise VideoDecodeError(f"video file is empty (0 bytes): {path}; re-download or remove it")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


class VideoReader:
    """Common surface of all backends; subclasses fill `num_frames`, `fps` and `_read`."""

    path: str
    num_frames: int
    fps: float
    frames_decoded: int = 0  # how many frames the codec produced so far (tests check seeking)

    def get_frames(self, indices: Sequence[int]) -> np.ndarray:
        """Frames at `indices` (any order, repeats allowed) as uint8 (T, H, W, 3)."""
        if len(indices) == 0:
            raise ValueError("get_frames needs at least one index")
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            raise IndexError(f"frame index out of [0, {self.num_frames}) for {self.path}")
        try:
            got = self._read(wanted)
        except VideoDecodeError:
            raise
        except Exception as exc:  # backends raise many types for corrupt streams
            raise VideoDecodeError(f"cannot decode {self.path}: {_one_line(exc)}") from exc
        return np.stack([got[int(i)] for i in indices])

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PyAVReader(VideoReader):
    """PyAV reader with a packet index: exact frame count, seek to keyframes, decode forward."""

    def __init__(self, path: str, threads: int = 1) -> None:
        import av

        self.path = path
        _check_file(path)
        try:
            self._container = av.open(path)
            if not self._container.streams.video:
                raise VideoDecodeError(f"no video stream in {path}")
            self._stream = self._container.streams.video[0]
            self._stream.thread_count = threads
            self._index_packets()
        except VideoDecodeError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise VideoDecodeError(f"cannot open video {path}: {_one_line(exc)}") from exc

    def _index_packets(self) -> None:
        """Demux once (no decoding): presentation timestamps in order and keyframe positions."""
        stream = self._stream
        pts_key = []
        for packet in self._container.demux(stream):
            if packet.size == 0:
                continue
            ts = packet.pts if packet.pts is not None else packet.dts
            pts_key.append((ts if ts is not None else len(pts_key), bool(packet.is_keyframe)))
        if not pts_key:
            raise VideoDecodeError(f"video has no frames: {self.path}")
        pts_key.sort()
        self._pts = [p for p, _ in pts_key]
        self._pts_to_index = {p: i for i, p in enumerate(self._pts)}
        self._keyframes = [i for i, (_, k) in enumerate(pts_key) if k] or [0]
        self.num_frames = len(self._pts)
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self.fps = float(rate)
        else:  # no rate in the header: frames over the span of timestamps
            span = float((self._pts[-1] - self._pts[0]) * stream.time_base) if self._pts else 0
            self.fps = (self.num_frames - 1) / span if span > 0 else 0.0

    def _frame_index(self, frame) -> int:
        ts = frame.pts if frame.pts is not None else frame.dts
        idx = self._pts_to_index.get(ts)
        if idx is None:  # timestamps not matching packets: nearest earlier packet
            idx = max(bisect.bisect_right(self._pts, ts if ts is not None else -1) - 1, 0)
        return idx

    def _seek_to(self, index: int) -> None:
        key = self._keyframes[bisect.bisect_right(self._keyframes, index) - 1]
        self._container.seek(self._pts[key], stream=self._stream, backward=True, any_frame=False)

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        todo = list(wanted)
        self._seek_to(todo[0])
        last = None
        while todo:
            progressed = False
            for frame in self._container.decode(self._stream):
                self.frames_decoded += 1
                idx = self._frame_index(frame)
                last, progressed = frame, True
                if todo[0] <= idx:  # `<` too: fills indices a lying container skipped
                    array = frame.to_ndarray(format="rgb24")
                    while todo and todo[0] <= idx:
                        out[todo.pop(0)] = array
                if not todo:
                    break
                next_key = self._keyframes[bisect.bisect_right(self._keyframes, todo[0]) - 1]
                if next_key > idx + 1:  # a keyframe lies between here and the next wanted frame
                    self._seek_to(todo[0])
                    break
            else:  # stream ended before the wanted frames: repeat the last decoded frame
                if last is None:
                    raise VideoDecodeError(f"no frame could be decoded from {self.path}")
                array = last.to_ndarray(format="rgb24")
                out.update((i, array) for i in todo)
                todo = []
            if not progressed and todo:
                raise VideoDecodeError(f"decoder produced no frames for {self.path}")
        return out

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            container.close()
            self._container = None


class DecordReader(VideoReader):
    """decord's VideoReader (optional); fast random access on some codecs."""

    def __init__(self, path: str, threads: int = 1, fallback: bool = False) -> None:
        import decord

        self.path, self._fallback, self._threads = path, fallback, threads
        _check_file(path)
        try:
            self._vr = decord.VideoReader(path, num_threads=threads)
            self.num_frames = len(self._vr)
            self.fps = float(self._vr.get_avg_fps())
        except Exception as exc:
            raise VideoDecodeError(f"cannot open video {path}: {_one_line(exc)}") from exc
        if self.num_frames == 0:
            raise VideoDecodeError(f"video has no frames: {path}")

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        try:
            frames = self._vr.get_batch(wanted).asnumpy()
        except Exception as exc:  # e.g. decord's stride bug on some widths
            if not self._fallback:
                raise
            log.info("decord failed on %s (%s); reading it with PyAV", self.path, _one_line(exc))
            with PyAVReader(self.path, self._threads) as reader:
                return reader._read(wanted)
        self.frames_decoded += len(wanted)
        return dict(zip(wanted, frames))


class FramesReader(VideoReader):
    """A folder of extracted frames (`img_00001.jpg` ...), read in sorted name order."""

    def __init__(self, path: str, fps: float = 30.0) -> None:
        self.path = path
        _check_file(path)
        if not os.path.isdir(path):
            raise VideoDecodeError(f"not a folder of frames: {path}")
        self._files = sorted(f for f in os.listdir(path) if f.lower().endswith(FRAME_EXTENSIONS))
        if not self._files:
            raise VideoDecodeError(f"no .jpg/.png frames in folder {path}")
        self.num_frames = len(self._files)
        self.fps = fps

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        from PIL import Image

        out = {}
        for i in wanted:
            with Image.open(os.path.join(self.path, self._files[i])) as img:
                out[i] = np.asarray(img.convert("RGB"))
            self.frames_decoded += 1
        return out


def resolve_backend(path: str | os.PathLike, backend: str = "auto") -> str:
    """The backend that will read `path`: folders are frames; auto prefers decord if installed."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "decord" and not decord_available():
        raise VideoDecodeError(
            "backend 'decord' was forced but decord is not installed: "
            "`pip install decord` (or aptune[decord]) or use --backend pyav"
        )
    if backend != "auto":
        return backend
    if Path(path).is_dir():
        return "frames"
    return "decord" if decord_available() else "pyav"


def open_video(path: str | os.PathLike, backend: str = "auto", threads: int = 1) -> VideoReader:
    """Open `path` with the chosen backend; errors are `VideoDecodeError` naming the file."""
    path = os.fspath(path)
    kind = resolve_backend(path, backend)
    if kind == "frames":
        return FramesReader(path)
    if kind == "decord":  # chosen by "auto": fall back to PyAV where decord breaks
        return DecordReader(path, threads, fallback=backend == "auto")
    return PyAVReader(path, threads)


def read_frames(
    path: str | os.PathLike, indices: Sequence[int], backend: str = "auto"
) -> np.ndarray:
    """One-shot helper: open, read `indices`, close."""
    with open_video(path, backend) as reader:
        return reader.get_frames(indices)
