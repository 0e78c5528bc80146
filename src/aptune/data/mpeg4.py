"""MPEG-4 part 2 (DivX / Xvid) bitstream facts the decoder's frame order depends on.

AVI stores packets in decode order without presentation times, and DivX 5 / Xvid "packed
bitstream" files (UCF101, HMDB51) put two VOPs in one packet with a 6-byte N-VOP
placeholder after them. `mpeg4_positions` reads picture types from the packets (no
decoding) and follows what FFmpeg's mpeg4 decoder does with them, so a reader can number
the decoder's output exactly as a sequential decode would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_PACKED = re.compile(rb"DivX\d+(?:b|Build)\d+p")  # user data of DivX-style packed B-frames


class Bits:
    """Big-endian bit reader over bytes (enough for a few MPEG-4 header fields)."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data, self.pos = data, pos * 8

    def read(self, n: int) -> int:
        first, end = self.pos >> 3, (self.pos + n + 7) >> 3
        chunk = int.from_bytes(self.data[first:end].ljust(end - first, b"\0"), "big")
        value = (chunk >> ((end << 3) - self.pos - n)) & ((1 << n) - 1)
        self.pos += n
        return value


def start_codes(data: bytes, value_range: range) -> Iterator[int]:
    """Offsets just after each `00 00 01 xx` start code whose xx lies in `value_range`."""
    at = data.find(b"\x00\x00\x01")
    while 0 <= at < len(data) - 3:
        if data[at + 3] in value_range:
            yield at + 4
        at = data.find(b"\x00\x00\x01", at + 3)


def time_increment_bits(data: bytes) -> int | None:
    """Width of vop_time_increment, from the first video_object_layer header in `data`."""
    for at in start_codes(data, range(0x20, 0x30)):
        bits = Bits(data, at)
        bits.read(9)  # random_accessible_vol, video_object_type_indication
        verid = 1
        if bits.read(1):  # is_object_layer_identifier
            verid = bits.read(4)
            bits.read(3)
        if bits.read(4) == 0xF:  # aspect_ratio_info: extended PAR
            bits.read(16)
        if bits.read(1):  # vol_control_parameters
            bits.read(3)
            if bits.read(1):  # vbv_parameters
                bits.read(79)
        if bits.read(2) == 3 and verid != 1:  # grayscale shape
            bits.read(4)
        bits.read(1)
        resolution = bits.read(16)
        return max((resolution - 1).bit_length(), 1) if resolution else None
    return None


def vops_of(data: bytes, time_bits: int | None) -> list[tuple[str, bool]]:
    """The first two VOPs of one packet as (picture type "I"/"P"/"B"/"S", vop_coded)."""
    vops: list[tuple[str, bool]] = []
    at = data.find(b"\x00\x00\x01\xb6")
    while at >= 0 and len(vops) < 2:  # the decoder never looks past a second VOP
        at += 4
        kind, coded = "IPBS"[data[at] >> 6] if at < len(data) else "P", True
        end = data.find(b"\x00\x00\x01", at)
        if time_bits is not None and (end if end >= 0 else len(data)) - at <= 16:
            bits = Bits(data, at)  # short enough to be a not-coded VOP: read vop_coded
            bits.read(2)
            while bits.read(1) and bits.pos < len(data) * 8:  # modulo_time_base
                pass
            bits.read(1 + time_bits + 1)  # marker, vop_time_increment, marker
            coded = bool(bits.read(1))
        vops.append((kind, coded))
        at = data.find(b"\x00\x00\x01\xb6", at)
    return vops


def starts_intra(data: bytes) -> bool:
    """Whether the packet's first VOP is an I-VOP (a decode can start there)."""
    at = data.find(b"\x00\x00\x01\xb6")
    return 0 <= at < len(data) - 4 and data[at + 4] >> 6 == 0


def mpeg4_positions(
    payloads: list[bytes], extradata: bytes
) -> tuple[int, list[int | None], dict[int, range]]:
    """Frames FFmpeg's mpeg4 decoder yields, the display position of each packet's first,
    and the packets to leave out after a seek to a packed I-packet.

    Follows the decoder on a stream without timestamps: with DivX-style packing (two VOPs
    in a packet) the second I/B-VOP is buffered and decoded in place of the next packet
    (whose own I/B-VOP is buffered in turn, an N-VOP placeholder ends the chain); a
    not-coded VOP (N-VOP) or a B-VOP before two references yields nothing (but a stream
    without B-VOPs that ends in N-VOPs yields its last frame once more when the decoder is
    flushed); a reference is shown after the B-VOPs that follow it in decode order. After
    a seek to a packet [I, B] the leading B-VOPs cannot be decoded; their B-only packets
    are left out so the placeholder consumes the buffered B-VOP instead of being parsed
    (an N-VOP's time stamp would otherwise change how the next B-VOPs are predicted).
    """
    time_bits = time_increment_bits(extradata + (payloads[0] if payloads else b""))
    packed = any(_PACKED.search(data) for data in [extradata, *payloads[:4]])
    first: list[int | None] = [None] * len(payloads)
    shown, refs = 0, 0
    held: tuple[int, bool] | None = None  # reference waiting to be shown
    pending = None  # buffered VOP: (type, coded, packet it came from, first in it)
    skip: dict[int, range] = {}
    lead_i: int | None = None  # packet [I, B] whose following B-only packets are leading
    ends_not_coded = saw_b = False

    def show(origin: int, lead: bool) -> None:
        nonlocal shown
        if lead:  # the packet's own (first) VOP: where a seek to this packet starts
            first[origin] = shown
        shown += 1

    def decode(kind: str, coded: bool, origin: int, lead: bool) -> bool:  # a frame decoded?
        nonlocal held, refs
        if not coded or (kind == "B" and refs < 2):
            return False
        if kind == "B":
            show(origin, lead)
        else:
            if held is not None:
                show(*held)
            held, refs = (origin, lead), refs + 1
        return True

    for i, data in enumerate(payloads):
        vops = vops_of(data, time_bits)
        if lead_i is not None and not (len(data) > 7 and vops and vops[0][0] == "B"):
            skip[lead_i], lead_i = range(lead_i + 1, i), None
        if packed and [kind for kind, _ in vops[:2]] == ["I", "B"]:
            lead_i = i
        if pending is not None and data[:4] != b"\x00\x00\x01\xb0":
            done = decode(*pending)
            pending = None
            if done and packed and len(data) > 7 and vops and vops[0][0] in "IB":
                pending = (*vops[0], i, True)  # this packet is buffered in turn
            continue
        pending = None
        if vops:
            ends_not_coded = not vops[0][1]
            saw_b = saw_b or vops[0][0] == "B"
        if vops and decode(*vops[0], i, True) and packed and len(vops) > 1:
            pending = (*vops[1], i, False) if vops[1][0] in "IB" else None
    if held is not None:
        show(*held)
    if ends_not_coded and not saw_b:  # FFmpeg's flush shows the last picture once more
        shown += 1
    return shown, first, skip
