"""PIL's bicubic affine warp, byte for byte, for a whole clip at once, for the warps that move
pixels along one axis (RandAugment's ShearX/Y and TranslateX/Y, the bicubic default).

PIL (``Geometry.c``) samples output pixel (x, y) at ``(a*(x+.5) + b*(y+.5) + c,
d*(x+.5) + e*(y+.5) + f)``, interpolates 4x4 clamped taps with the a = -1 cubic in double
precision, clamps to 0..255 and truncates; samples outside the source keep the fill colour.
For a shear or translation along x every sample's vertical offset is exactly 0 (its row is
``y + integer``), so each output value is a 1-D interpolation of 4 taps in one row and the
interpolation over rows returns that row's value unchanged; along y the same holds with rows
and columns swapped. A clip warps all its frames with one matrix, so positions and weights
are computed once per clip (one weight per output row or column), the taps are gathered as
packed RGB0 words, and the weighted sum runs in float32 over all frames.

Exactness: the float32 sum is within 4e-4 of the true value (weights below 1.3, taps below
256), PIL's double result within 1e-12, so their floors agree unless the value lies within
1e-3 of an integer. Those values are recomputed with PIL's own double-precision formula, in
its order of operations; flat taps (all equal) and zero offsets are exact in both. Rotation
(2-D taps), bilinear (PIL's 2x2 path measured faster than this one) and nearest (PIL's
fixed-point path) stay with PIL: ``warp_clip`` returns None for them.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_NEAR_INTEGER = 1e-3  # recompute exactly when the float32 value is this close to an integer
_RGB_ONES = np.uint32(0x00010101)  # True in the three colour bytes of a word of bools
_CHUNK_PIXELS = 1 << 17  # float values per pass (frames x rows x 4 bytes): L2-sized buffers

Matrix = tuple[float, float, float, float, float, float]


def warp_clip(
    frames: np.ndarray,
    size: tuple[int, int],
    matrix: Matrix,
    resample: int,
    fillcolor: tuple[int, int, int],
) -> np.ndarray | None:
    """``Image.transform(size, AFFINE, matrix, resample, fillcolor=fillcolor)`` of every frame
    of a uint8 (T, H, W, 3) clip, as (T, h, w, 3); None when the warp is not along one axis
    or the filter is not bicubic (then PIL must do it)."""
    if resample != Image.Resampling.BICUBIC:
        return None
    t, height, width, _ = frames.shape
    out_w, out_h = size
    a, b, c, d, e, f = (float(v) for v in matrix)
    xs = np.arange(out_w, dtype=np.float64) + 0.5
    ys = np.arange(out_h, dtype=np.float64) + 0.5
    xin = a * xs[None, :] + b * ys[:, None] + c  # (h, w), PIL's order: (a*x + b*y) + c
    yin = d * xs[None, :] + e * ys[:, None] + f
    inside = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    r, g, b_ = (int(v) for v in fillcolor[:3])
    fill = np.uint32(r | g << 8 | b_ << 16)
    if not inside.any():
        return _unpacked(np.full((t, out_h * out_w), fill, np.uint32)).reshape(t, out_h, out_w, 3)
    xm, ym = xin - 0.5, yin - 0.5
    xf, yf = np.floor(xm), np.floor(ym)
    dx, dy = xm - xf, ym - yf
    xi, yi = xf.astype(np.intp), yf.astype(np.intp)
    if not dy[inside].any():  # along x: one row per sample, one offset per output row
        offset, axis, row = dx, 1, np.clip(yi, 0, height - 1) * width
        index = [row + np.clip(xi - 1 + k, 0, width - 1) for k in range(4)]
    elif not dx[inside].any():  # along y: one column per sample, one offset per column
        offset, axis, col = dy, 0, np.clip(xi, 0, width - 1)
        index = [np.clip(yi - 1 + k, 0, height - 1) * width + col for k in range(4)]
    else:
        return None
    if not offset[inside].any():  # whole-pixel moves: PIL returns the second tap itself
        words = np.take(_packed(frames), index[1].ravel(), axis=1)
        np.copyto(words, fill, where=~inside.reshape(1, -1))
        return _unpacked(words).reshape(t, out_h, out_w, 3)
    shared = _shared_offset(offset, inside, axis)
    if shared is None:
        return None
    words = _interpolate(_packed(frames), [i.ravel() for i in index], offset, shared, axis)
    np.copyto(words, fill, where=~inside.reshape(1, -1))
    return _unpacked(words).reshape(t, out_h, out_w, 3)


def _shared_offset(offset: np.ndarray, inside: np.ndarray, axis: int) -> np.ndarray | None:
    """The offset each output row (``axis`` 1) or column (``axis`` 0) shares: its samples'
    offsets agree to rounding (1e-15) for a shear or translation, and the float32 weights are
    computed once from it. None if some row's offsets spread (a sample on an exact pixel
    edge, where rounding could move its taps by one pixel): PIL then does the warp."""
    low = np.where(inside, offset, np.inf).min(axis=axis)
    high = np.where(inside, offset, -np.inf).max(axis=axis)
    if np.any(high - low > 1e-9):
        return None
    return np.where(np.isfinite(low), low, 0.0)


def _packed(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, H*W) uint32 RGB0 words, so that one gather moves a whole
    pixel: the frames are copied once into a byte buffer, read as overlapping 4-byte words
    every 3 bytes, and the fourth byte (the next pixel's red) is masked off."""
    t, height, width, _ = frames.shape
    count = t * height * width
    buffer = np.empty(count * 3 + 1, np.uint8)
    buffer[-1] = 0
    buffer[:-1].reshape(frames.shape)[...] = frames
    words = np.ndarray((count,), np.uint32, buffer, 0, (3,))  # unaligned, overlapping reads
    return np.bitwise_and(words, np.uint32(0x00FFFFFF)).reshape(t, height * width)


def _unpacked(words: np.ndarray) -> np.ndarray:
    """(..., n) uint32 RGB0 words -> (..., n, 3) uint8 (three shifted narrowing copies: far
    faster than copying 3 of every 4 bytes)."""
    out = np.empty((*words.shape, 3), np.uint8)
    for lane in range(3):
        np.copyto(out[..., lane], words >> (8 * lane) if lane else words, casting="unsafe")
    return out


def _weights(offset: np.ndarray) -> list[np.ndarray]:
    """float32 weight of each of the 4 taps at each ``offset`` d: PIL's ``p1 + d*p2 + d^2*p3
    + d^3*p4`` expanded per tap."""
    d = offset
    d2, d3 = d * d, d * d * d
    return [w.astype(np.float32) for w in (-d + 2 * d2 - d3, 1 - 2 * d2 + d3, d + d2 - d3, d3 - d2)]


def _exact(
    v1: np.ndarray, v2: np.ndarray, v3: np.ndarray, v4: np.ndarray, d: np.ndarray
) -> np.ndarray:
    """PIL's double-precision cubic (its ``BICUBIC`` macro, in its order of operations) of
    float64 tap values at offsets ``d``, then its clamp and truncation to uint8."""
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    v = v2 + d * (p2 + d * (p3 + d * p4))
    return np.clip(np.floor(v), 0, 255).astype(np.uint8)


def _interpolate(
    packed: np.ndarray, index: list[np.ndarray], offset: np.ndarray, shared: np.ndarray, axis: int
) -> np.ndarray:
    """(T, h*w) uint32 RGB0 words of the interpolated samples of the packed frames (see the
    module docstring); ``offset`` (h, w) is each sample's exact offset, ``shared`` the one its
    row (``axis`` 1) or column (``axis`` 0) shares.

    A few output rows at a time for all frames: buffers stay in the L2 cache, and the weights
    broadcast along contiguous memory. The float arithmetic runs in torch (vectorised mixed
    uint8/float kernels) on tensors that share the numpy buffers."""
    t = packed.shape[0]
    out_h, out_w = offset.shape
    ref = 1  # the tap PIL returns at a zero offset
    weights = _weights(shared)
    # each tap's weight for every output byte, (h, 4w): the products below then broadcast
    # over frames only, along contiguous memory (a per-row (rows, 1) weight runs 3x slower)
    per_byte = (lambda w: w[:, None]) if axis == 1 else (lambda w: np.repeat(w, 4)[None, :])
    weights_t = [
        torch.from_numpy(np.ascontiguousarray(np.broadcast_to(per_byte(w), (out_h, 4 * out_w))))
        for w in weights
    ]
    exact_offset = offset.ravel()
    zero_offset = exact_offset == 0
    out = np.empty((t, out_h * out_w), np.uint32)
    rows = max(1, _CHUNK_PIXELS // (4 * t * out_w))
    # buffers for the largest chunk, reused: a fresh array of this size per step would be a
    # fresh mmap (glibc's threshold is 128 KB) and its page faults, a third of the time
    size = t * rows * out_w
    word_buf = [np.empty(size, np.uint32) for _ in index]
    tap_buf, value_buf, floor_buf = (torch.empty(4 * size) for _ in range(3))
    doubtful_buf, above_buf = np.empty(4 * size, bool), np.empty(4 * size, bool)
    exact_buf, same_buf, mask_buf = (
        np.empty(size, bool),
        np.empty(size, bool),
        np.empty(size, np.uint32),
    )
    for r0 in range(0, out_h, rows):
        r1 = min(r0 + rows, out_h)
        span, m = slice(r0 * out_w, r1 * out_w), t * (r1 - r0) * out_w
        words = [buf[:m].reshape(t, -1) for buf in word_buf]  # (T, chunk pixels)
        for i, w in zip(index, words):
            np.take(packed, i[span], axis=1, mode="wrap", out=w)
        shape = (t, r1 - r0, 4 * out_w)
        tap, value, floor = (buf[: 4 * m].view(shape) for buf in (tap_buf, value_buf, floor_buf))
        lanes = [torch.from_numpy(w.view(np.uint8)).view(shape) for w in words]
        wts = [w[r0:r1] for w in weights_t]
        torch.mul(tap.copy_(lanes[0]), wts[0], out=value)
        for lane, weight in zip(lanes[1:], wts[1:]):
            value.addcmul_(tap.copy_(lane), weight)
        torch.floor(value, out=floor)
        fraction = value.sub_(floor).numpy().reshape(t, -1)
        doubtful, above = doubtful_buf[: 4 * m].reshape(t, -1), above_buf[: 4 * m].reshape(t, -1)
        np.less(fraction, _NEAR_INTEGER, out=doubtful)
        np.greater(fraction, 1 - _NEAR_INTEGER, out=above)
        doubtful |= above  # (T, 4 * chunk pixels)
        exact, same = exact_buf[:m].reshape(t, -1), same_buf[:m].reshape(t, -1)
        np.equal(words[0], words[1], out=exact)  # PIL's value is the reference tap exactly
        for w in words[2:]:  # at a zero offset or when all taps are equal
            np.equal(w, words[ref], out=same)
            exact &= same
        exact |= zero_offset[span]
        # per word: keep the doubtful RGB bytes of inexact samples (bools viewed as words)
        mask = mask_buf[:m].reshape(t, -1)
        np.multiply(~exact, _RGB_ONES, out=mask)
        doubtful.view(np.uint32)[...] &= mask
        res = out[:, span].view(np.uint8).reshape(t, -1)  # (T, 4 * chunk pixels) bytes
        np.copyto(res, floor.clamp_(0, 255).numpy().reshape(t, -1), casting="unsafe")
        if exact.any():
            np.copyto(out[:, span], words[ref], where=exact)
        flat = np.flatnonzero(doubtful)
        if len(flat):
            ti, byte = np.divmod(flat, res.shape[1])
            lane_values = [w.view(np.uint8).reshape(t, -1)[ti, byte] for w in words]
            d = exact_offset[span][byte // 4]
            res[ti, byte] = _exact(*(v.astype(np.float64) for v in lane_values), d)
    return out
