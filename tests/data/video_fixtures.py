"""Videos with the frame structure of real downloads, written with PyAV, and a reference decode.

`write_coded` encodes distinct frames with a chosen codec, B-frames and GOP;
`pack_b_frames` re-muxes an mpeg4 AVI the way DivX 5 / Xvid "packed bitstream" store
B-frames (UCF101 and HMDB51 are such files): each B-VOP that follows a reference packet
in decode order is appended to that packet, and its own slot holds a 6-byte N-VOP
(`vop_coded = 0`) placeholder; the decoder learns of the packing from the
``DivX503b1393p`` user data. FFmpeg's `mpeg4_unpack_bframes` bitstream filter is its
inverse. `sequential_frames` is the ground truth: one plain decode from the start.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from aptune.data.mpeg4 import start_codes, time_increment_bits

FPS = 25
PACKED_USER_DATA = b"\x00\x00\x01\xb2DivX503b1393p"


def distinct_frames(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): a textured pan plus a moving block, so every frame differs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(50, 140, (height, width, 3)).astype(np.uint8)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        frame = np.roll(base, 2 * i, axis=1)
        x = (5 * i) % max(width - 8, 1)
        frame[height // 3 : height // 3 + 8, x : x + 8] = (250, 40, 40)
        frames[i] = frame
    return frames


def write_coded(
    path: Path,
    frames: np.ndarray,
    codec: str,
    options: dict[str, str] | None = None,
    b_frames: int = 0,
    gop: int = 12,
) -> Path:
    """Encode `frames` with `codec` into `path` (container from the extension)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        stream.gop_size = gop
        if b_frames:
            stream.codec_context.max_b_frames = b_frames
        stream.options = dict(options or {})
        stream.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _vop_type(data: bytes) -> str:
    at = next(start_codes(data, range(0xB6, 0xB7)))
    return "IPBS"[data[at] >> 6]


def _n_vop(time_bits: int) -> bytes:
    """A not-coded P-VOP: type 01, modulo_time_base 0, marker, increment 0, marker, coded 0."""
    bits = "01" + "0" + "1" + "0" * time_bits + "1" + "0"
    bits += "0" + "1" * (-(len(bits) + 1) % 8)  # MPEG-4 stuffing: a 0, then 1s to the byte
    return b"\x00\x00\x01\xb6" + int(bits, 2).to_bytes(len(bits) // 8, "big")


def pack_b_frames(source: Path, target: Path) -> Path:
    """Re-mux an mpeg4 AVI with packed B-frames and N-VOP placeholders (DivX 5 layout)."""
    with av.open(str(source)) as inp:
        stream = inp.streams.video[0]
        packets = [(bytes(p), bool(p.is_keyframe)) for p in inp.demux(stream) if p.size]
        time_bits = time_increment_bits((stream.codec_context.extradata or b"") + packets[0][0])
        assert time_bits is not None, "no VOL header found"
        placeholder = _n_vop(time_bits)
        out: list[bytes] = []
        keys: list[bool] = []
        previous = "I"
        for data, key in packets:  # decode order: R B1 B2 -> [R B1] [B2] [N-VOP]
            kind = _vop_type(data)
            if key:  # the user data that tells decoders the stream is packed
                at = data.index(b"\x00\x00\x01\xb6")
                data = data[:at] + PACKED_USER_DATA + data[at:]
            if kind == "B" and previous != "B":
                out[-1] += data  # first B after a reference: packed into it
            else:
                if kind != "B" and previous == "B":  # a run of B-VOPs ends: the placeholder
                    out.append(placeholder)
                    keys.append(False)
                out.append(data)
                keys.append(key)
            previous = kind
        if previous == "B":
            out.append(placeholder)
            keys.append(False)
        assert len(out) == len(packets)
        _write_packets(target, stream, list(zip(out, keys)))
    return target


def insert_n_vops(source: Path, target: Path, every: int = 7) -> Path:
    """Re-mux an mpeg4 AVI with a not-coded VOP after every `every`-th packet, as Xvid writes
    for repeated frames: the decoder yields no frame for them."""
    with av.open(str(source)) as inp:
        stream = inp.streams.video[0]
        packets = [(bytes(p), bool(p.is_keyframe)) for p in inp.demux(stream) if p.size]
        time_bits = time_increment_bits((stream.codec_context.extradata or b"") + packets[0][0])
        assert time_bits is not None, "no VOL header found"
        out = []
        for i, (data, key) in enumerate(packets):
            out.append((data, key))
            if i % every == every // 2:
                out.append((_n_vop(time_bits), False))
        _write_packets(target, stream, out)
    return target


def _write_packets(target: Path, template, packets: list[tuple[bytes, bool]]) -> None:
    with av.open(str(target), "w") as dst:
        ost = dst.add_stream_from_template(template)
        for i, (data, key) in enumerate(packets):
            packet = av.Packet(data)
            packet.stream, packet.time_base = ost, template.time_base
            packet.pts = packet.dts = i
            packet.is_keyframe = key
            dst.mux(packet)


def sequential_frames(path: Path) -> np.ndarray:
    """Every frame of one plain decode from the start, in the order a player shows them."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def packet_sizes(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.size for p in container.demux(video=0) if p.size]
