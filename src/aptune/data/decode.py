"""Video decoding behind one small interface: PyAV (default), decord (optional), JPEG folders.

`open_video(path, backend)` returns a reader with `num_frames`, `fps` and
`get_frames(indices) -> uint8 ndarray (T, H, W, 3)`. Every reader is frame-exact: frame `i`
is byte for byte frame `i` of one sequential decode (the order a player shows them) and
`num_frames` is the number of frames that decode yields. The PyAV reader demuxes packets
once (cheap: no decoding) to find every keyframe's display position (AVI stores none: see
`PyAVReader`), then seeks to the keyframe before each run of wanted frames and decodes
forward only as far as the last wanted one. decord is not exact on AVIs with B-frames, so
`auto` reads AVI files with PyAV.
"""

from __future__ import annotations

import bisect
import collections
import importlib.util
import itertools
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .errors import DataError, VideoDecodeError
from .mpeg4 import mpeg4_positions, starts_intra

log = logging.getLogger("aptune.data")
BACKENDS = ("auto", "pyav", "decord", "frames")
_SCALERS = threading.local()  # one RGB scaler context per thread, kept across readers
_INHERITED: list = []  # contexts a forked child got from its parent: never used nor freed
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


# Containers whose packets carry no presentation order: FFmpeg guesses their timestamps.
_UNTIMED_FORMATS = {"avi", "h264", "hevc", "m4v", "mpegvideo", "h263", "mjpeg", "rawvideo"}


class PyAVReader(VideoReader):
    """PyAV reader, frame-exact: `get_frames(ix)` equals frames `ix` of a sequential decode.

    One demux pass at open (no decoding) indexes the packets in decode order and finds the
    display position of every keyframe: from the packet timestamps where the container stores
    presentation times (mp4, mkv, webm), otherwise (AVI, raw streams) by counting the frames
    the decoder yields before it (MPEG-4 part 2 packets are parsed for picture types, packed
    B-frames and N-VOPs). Reading seeks to the keyframe before the wanted frames, skips
    packets up to it (the container's seek may land earlier), decodes forward and numbers the
    decoder's output from that keyframe on; frames before it in display order (open-GOP
    leading B-frames) are dropped, as they cannot be decoded from here.
    """

    def __init__(self, path: str, threads: int = 1, skip_nonref: bool = True) -> None:
        self.path, self._threads, self.skip_nonref = path, threads, skip_nonref
        _check_file(path)
        try:
            self._open()
            self._index_packets()
        except VideoDecodeError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise VideoDecodeError(f"cannot open video {path}: {_one_line(exc)}") from exc

    def _open(self) -> None:
        import av

        self.close()
        self._container = av.open(self.path)
        if not self._container.streams.video:
            raise VideoDecodeError(f"no video stream in {self.path}")
        self._stream = self._container.streams.video[0]
        self._stream.thread_count = self._threads

    def _rgb(self, frame) -> np.ndarray:
        """uint8 (H, W, 3), as `frame.to_ndarray(format="rgb24")` but through one scaler
        context per thread (PyAV makes one per frame object: ~1 ms each at 320x240)."""
        owner, reformatter = getattr(_SCALERS, "rgb", (None, None))
        if owner != os.getpid():  # none yet, or inherited through fork (a DataLoader worker)
            import av

            if reformatter is not None:  # the parent's context deadlocks in a forked child
                _INHERITED.append(reformatter)
            reformatter = av.video.reformatter.VideoReformatter()
            _SCALERS.rgb = (os.getpid(), reformatter)
        return reformatter.reformat(frame, format="rgb24").to_ndarray()

    def _index_packets(self) -> None:
        """Demux once: packet identities, seek targets, keyframes and their display positions."""
        stream = self._stream
        untimed = bool(set(self._container.format.name.split(",")) & _UNTIMED_FORMATS)
        parse = untimed and stream.codec_context.name == "mpeg4"
        rows, payloads = [], []
        for packet in self._container.demux(stream):
            if packet.size == 0:
                continue
            rows.append((packet.pts, packet.dts, packet.pos, packet.is_keyframe, packet.is_discard))
            if parse:
                payloads.append(bytes(packet))
        if not rows:
            raise VideoDecodeError(f"video has no frames: {self.path}")
        pts, dts, pos, key, discard = (list(column) for column in zip(*rows))
        self._ident = None  # how a packet met again after a seek is recognised
        for kind, values in (("dts", dts), ("pos", pos)):
            if None not in values and len(set(values)) == len(values):
                self._ident, self._ids = kind, {v: i for i, v in enumerate(values)}
                break
        self._seek_ts = [d if d is not None else p for p, d in zip(pts, dts)]
        keyframes = [i for i, k in enumerate(key) if k] or [0]
        self._rank: dict[int, int] | None = None  # pts -> display position, where pts are real
        self._skip: dict[int, range] = {}  # keyframe packet -> packets not to decode after it
        if not untimed and None not in pts and len(set(pts)) == len(pts):
            # an edit list can mark packets "discard": decoded as references, never shown
            shown = sorted(p for p, d in zip(pts, discard) if not d)
            self._rank, self._pts = {p: i for i, p in enumerate(shown)}, pts
            self._hidden = {p for p, d in zip(pts, discard) if d}
            self.num_frames, first = len(shown), [self._rank.get(p) for p in pts]
        elif parse:
            extradata = stream.codec_context.extradata or b""
            self.num_frames, first, self._skip = mpeg4_positions(payloads, extradata)
            # an index that flags a P-VOP as key would start a decode without its reference
            keyframes = [k for k in keyframes if starts_intra(payloads[k])] or [0]
        else:  # every packet one frame, keyframes close their GOP (IDR): count packets
            self.num_frames, first = len(rows), list(range(len(rows)))
        starts = sorted((first[k], k) for k in keyframes if first[k] is not None)
        if not starts or self.num_frames == 0:
            raise VideoDecodeError(f"video has no decodable frames: {self.path}")
        self._key_pos = [s for s, _ in starts]  # display position of each usable keyframe
        self._key_packet = [k for _, k in starts]  # its decode index
        rate = stream.average_rate or stream.guessed_rate
        if rate:
            self.fps = float(rate)
        else:  # no rate in the header: frames over the span of timestamps
            ts = [t for t in pts if t is not None]
            span = float((max(ts) - min(ts)) * stream.time_base) if ts else 0.0
            self.fps = (self.num_frames - 1) / span if span > 0 else 0.0

    def _packets_from(self, first: int) -> Iterator[tuple[int, object]]:
        """(decode index, packet) from packet `first` on: seek, then skip to it exactly."""
        import av

        for attempt in ("seek", "reopen"):
            if attempt == "seek":
                if self._ident is None:
                    continue
                try:
                    self._container.seek(
                        self._seek_ts[first], stream=self._stream, backward=True, any_frame=False
                    )
                except av.FFmpegError:
                    continue
            else:  # from the start: packets counted, no seek needed
                self._open()
            index = -1
            found = False
            for packet in self._container.demux(self._stream):
                if packet.size == 0:
                    continue
                if found:
                    index += 1
                elif attempt == "reopen":
                    index += 1
                    found = index == first
                else:
                    index = self._ids.get(getattr(packet, self._ident), -1)
                    if index > first:  # the seek went past the keyframe: start over
                        break
                    found = index == first
                if found:
                    yield index, packet
            if found:
                return
        raise VideoDecodeError(f"cannot reach packet {first} of {self.path}")

    def _frames_from(self, k: int, wanted: set[int]) -> Iterator[tuple[int, object]]:
        """(display position, frame) in display order, from usable keyframe number `k` on.

        Where frames are known by their timestamps, a packet whose frame is not in `wanted`
        is decoded with `skip_frame = NONREF`: if no other frame refers to it the decoder
        drops it (the others decode to the same bytes; the exactness tests check this).
        """
        first, start = self._key_packet[k], self._key_pos[k]
        packets = self._packets_from(first)
        head = next(packets)  # seeks (or reopens the file) before the decoder is taken
        codec = self._stream.codec_context
        codec.flush_buffers()
        codec.skip_frame = "DEFAULT"
        last: int | None = None
        skip = self._skip.get(first, range(0))
        for index, packet in itertools.chain([head], packets, [(None, None)]):
            if index in skip:
                continue
            if packet is not None and self._rank is not None and self.skip_nonref:
                shown = self._rank.get(self._pts[index])
                codec.skip_frame = "DEFAULT" if shown in wanted else "NONREF"
            elif packet is not None and self._rank is None:
                packet.pts = index  # tag: the decoder passes it on to the frame it starts
            for frame in codec.decode(packet):
                at = self._position(frame, first, start, last)
                if at is not None:
                    last = at
                    yield at, frame

    def _position(self, frame, first: int, start: int, last: int | None) -> int | None:
        """Display position of a decoded frame; None for frames before the keyframe."""
        if self._rank is None:  # counting: the keyframe's frame carries its packet's tag
            if last is not None:
                return last + 1
            return start if frame.pts == first or frame.key_frame else None
        at = self._rank.get(frame.pts)
        if frame.pts in self._hidden:
            return None
        if last is None:
            return at if at is not None and at >= start else None
        return at if at is not None and at > last else last + 1  # keep the order monotone

    def _read(self, wanted: list[int]) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        todo = collections.deque(wanted)
        wanted_set = set(wanted)
        while todo:
            k = max(bisect.bisect_right(self._key_pos, todo[0]) - 1, 0)
            last = None
            for at, frame in self._frames_from(k, wanted_set):
                self.frames_decoded += 1
                last = frame
                if at >= todo[0]:  # `>` too: fills positions a decoder skipped
                    array = self._rgb(frame)
                    while todo and todo[0] <= at:
                        out[todo.popleft()] = array
                    if not todo:
                        break
                nearest = bisect.bisect_right(self._key_pos, todo[0]) - 1
                if nearest > k and self._key_pos[nearest] > at + 1:  # seeking is shorter
                    break
            else:  # the stream ended first (a container that over-counts): repeat the last frame
                if last is None:
                    raise VideoDecodeError(f"no frame could be decoded from {self.path}")
                array = self._rgb(last)
                out.update((i, array) for i in todo)
                todo.clear()
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
    """The backend that will read `path`: folders are frames; auto prefers decord if installed,
    except for AVI files (decord is not frame-exact on AVIs with B-frames)."""
    if backend not in BACKENDS:
        raise DataError(f"video backend must be one of {BACKENDS} (--decoder), got {backend!r}")
    if backend == "decord" and not decord_available():
        raise VideoDecodeError(
            "backend 'decord' was forced but decord is not installed: "
            "`pip install decord` (or aptune[decord]) or use --backend pyav"
        )
    if backend != "auto":
        return backend
    if Path(path).is_dir():
        return "frames"
    if Path(path).suffix.lower() == ".avi":  # decord returns wrong frames of AVIs with B-frames
        return "pyav"
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
