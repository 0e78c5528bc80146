"""timm's RandAugment ops as batched torch ops on uint8 clips, on any device.

The PIL path augments every frame in DataLoader workers; this one runs a whole batch of
clips on the training device. Each clip carries its own magnitude (a tensor over the clip
axis), so one call serves every clip that drew the op, with no Python loop over clips or
frames. The arithmetic follows Pillow's C code (``libImaging``) step by step, with the same
integer formulas, float widths and operation order, so the results equal PIL's bit for bit
(the one theoretical exception, a last-bit tie, is in `_nearest_source`). Parameters built
on the host go to the device without a sync (`to_device`); nothing reads device values back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .augment_ops import Op, affine_matrix

_GEOMETRIC = frozenset(
    {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel", "TranslateYRel"}
)
_POSTERIZE = frozenset({"Posterize", "PosterizeIncreasing", "PosterizeOriginal"})
_SOLARIZE = frozenset({"Solarize", "SolarizeIncreasing"})
_BLEND = {  # op name -> the degenerate image PIL's ImageEnhance blends with
    "Color": "grey",
    "ColorIncreasing": "grey",
    "Contrast": "mean",
    "ContrastIncreasing": "mean",
    "Brightness": "black",
    "BrightnessIncreasing": "black",
    "Sharpness": "smooth",
    "SharpnessIncreasing": "smooth",
}
SUPPORTED: frozenset[str] = frozenset(
    {"AutoContrast", "Equalize", "Invert", "SolarizeAdd"}
    | _GEOMETRIC
    | _POSTERIZE
    | _SOLARIZE
    | _BLEND.keys()
)

NEAREST, BILINEAR, BICUBIC = 0, 2, 3  # PIL's resampling ids (Image.Resampling)
_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
_FLOAT_BUDGET = 1 << 24  # float64 elements per temporary of a warp (128 MB)


def apply_op(
    name: str,
    clips: torch.Tensor,
    args: Sequence[tuple],
    resample: Sequence[int],
    fill: tuple[int, int, int] = (128, 128, 128),
) -> torch.Tensor:
    """timm's op `name` on uint8 clips (N, T, 3, H, W): clip i with timm's level arguments
    `args[i]` and, for the geometric ops, PIL resampling `resample[i]` (0 nearest,
    2 bilinear, 3 bicubic) and `fill` outside the frame. The same op for all frames of a clip,
    as PIL per frame would give; a new tensor of the same shape and device."""
    if name not in SUPPORTED:
        raise ValueError(f"apply_op: unsupported RandAugment op {name!r}")
    if clips.dim() != 5 or clips.shape[2] != 3 or clips.dtype != torch.uint8:
        raise ValueError(f"apply_op: need uint8 clips (N, T, 3, H, W), got {clips.dtype} "
                         f"{tuple(clips.shape)}")  # fmt: skip
    if len(args) != clips.shape[0]:
        raise ValueError(f"apply_op: {len(args)} argument tuples for {clips.shape[0]} clips")
    if clips.shape[0] == 0:
        return clips.clone()
    if name in _GEOMETRIC:
        if len(resample) != clips.shape[0]:
            raise ValueError(f"apply_op: {len(resample)} resamplings for {clips.shape[0]} clips")
        return _geometric(name, clips, args, resample, fill)
    if name == "AutoContrast":
        return _apply_lut(clips, _autocontrast_lut(clips))
    if name == "Equalize":
        return _apply_lut(clips, _equalize_lut(clips))
    if name == "Invert":
        return 255 - clips
    if name in _POSTERIZE:  # keep the top `bits` bits; 0 bits: black (see _posterize_to_black)
        masks = [(0xFF << (8 - min(max(int(a[0]), 0), 8))) & 0xFF for a in args]
        return clips & _per_clip(masks, clips, torch.uint8)
    if name in _SOLARIZE:  # ImageOps.solarize: invert the values >= threshold
        thresh = _per_clip([int(a[0]) for a in args], clips, torch.int16)
        return torch.where(clips < thresh, clips, 255 - clips)
    if name == "SolarizeAdd":  # timm's LUT: values < thresh (default 128) get `add`, capped
        add = _per_clip([int(a[0]) for a in args], clips, torch.int16)
        thresh = _per_clip([int(a[1]) if len(a) > 1 else 128 for a in args], clips, torch.int16)
        added = (clips.to(torch.int16) + add).clamp(0, 255).to(torch.uint8)
        return torch.where(clips < thresh, added, clips)
    return _blend(_degenerate(_BLEND[name], clips), clips, [float(a[0]) for a in args])


def to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host-built tensor on ``device`` without waiting for the GPU.

    A blocking host-to-device copy synchronises the stream (waits for all queued GPU
    work); a non-blocking one from pageable memory may still be synchronous with the host,
    so the values go through pinned memory (the caching host allocator keeps the block
    until the copy has run)."""
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)


def _per_clip(values: Sequence[float], clips: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """One value per clip as an (N, 1, 1, 1, 1) tensor on the clips' device."""
    return to_device(torch.tensor(values, dtype=dtype).view(-1, 1, 1, 1, 1), clips.device)


# ----------------------------------------------------------------------------------------
# per-channel lookup tables (ImageOps.autocontrast / equalize): one 256-entry table per
# frame and channel ("plane"), built on the device from the plane's statistics


def _apply_lut(clips: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Plane p's pixels through `lut[p]` (P, 256); int32 indices (half the memory of int64)."""
    planes = clips.reshape(-1, clips.shape[-2] * clips.shape[-1])
    offsets = torch.arange(planes.shape[0], device=clips.device, dtype=torch.int32) * 256
    index = planes.to(torch.int32) + offsets[:, None]
    flat = lut.to(torch.uint8).reshape(-1)
    return flat.index_select(0, index.reshape(-1)).reshape(clips.shape)


def _autocontrast_lut(clips: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast(cutoff=0): lo..hi stretched to 0..255 with PIL's float64
    `int(ix * scale + offset)`, scale = 255 / (hi - lo); identity when hi <= lo."""
    planes = clips.reshape(-1, clips.shape[-2] * clips.shape[-1])
    lo = planes.amin(dim=1, keepdim=True).double()
    hi = planes.amax(dim=1, keepdim=True).double()
    # a true division (torch turns `scalar / tensor` into a reciprocal times the scalar)
    scale = torch.full_like(lo, 255.0) / (hi - lo).clamp(min=1.0)
    offset = -lo * scale
    ix = torch.arange(256, device=clips.device, dtype=torch.float64)
    lut = (ix * scale + offset).clamp(0.0, 255.0).trunc()
    return torch.where(hi > lo, lut, ix).to(torch.int64)


def _histograms(clips: torch.Tensor) -> torch.Tensor:
    """(P, 256) int64 histogram of each plane (a scatter-add: no host sync, unlike bincount)."""
    planes = clips.reshape(-1, clips.shape[-2] * clips.shape[-1])
    offsets = torch.arange(planes.shape[0], device=clips.device) * 256
    index = (planes.long() + offsets[:, None]).reshape(-1)
    hist = torch.zeros(planes.shape[0] * 256, dtype=torch.int64, device=clips.device)
    hist.scatter_add_(0, index, torch.ones_like(index))
    return hist.view(-1, 256)


def _equalize_lut(clips: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: step = (pixels - count of the highest value present) // 255,
    lut[i] = (step // 2 + pixels below i) // step (clipped to 255 as PIL's point clips);
    identity for a plane with one value or step 0."""
    hist = _histograms(clips)
    total = clips.shape[-2] * clips.shape[-1]
    values = torch.arange(256, device=clips.device)
    present = hist > 0
    last = torch.where(present, values, -1).amax(dim=1, keepdim=True).clamp(min=0)
    step = (total - hist.gather(1, last)) // 255
    below = hist.cumsum(dim=1) - hist
    lut = ((step // 2 + below) // step.clamp(min=1)).clamp(max=255)
    keep = (present.sum(dim=1, keepdim=True) <= 1) | (step == 0)
    return torch.where(keep, values, lut)


# ----------------------------------------------------------------------------------------
# blends (ImageEnhance): Image.blend(degenerate, image, factor)


def _grey(clips: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> "L": (R*19595 + G*38470 + B*7471 + 0x8000) >> 16, as int32 (N, T, H, W)."""
    rgb = clips.to(torch.int32)
    weighted = rgb[:, :, 0] * 19595 + rgb[:, :, 1] * 38470 + rgb[:, :, 2] * 7471
    return torch.bitwise_right_shift(weighted + 0x8000, 16)


def _smooth(clips: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, divisor 13) the way PIL's
    ImagingFilter3x3 sums it in float32: 0.5 + row below + row + row above, each row
    left + centre + right; clamped and truncated. The 1-pixel border stays the original."""
    height, width = clips.shape[-2:]
    if height < 3 or width < 3:  # PIL returns a copy of frames smaller than the kernel
        return clips.clone()
    thirteen = torch.tensor(13.0, dtype=torch.float32)
    side = (torch.tensor(1.0, dtype=torch.float32) / thirteen).item()  # PIL's float32 1/13
    centre = (torch.tensor(5.0, dtype=torch.float32) / thirteen).item()
    x = clips.float()
    left, mid, right = x[..., :-2], x[..., 1:-1], x[..., 2:]
    outer = (left * side + mid * side) + right * side  # (.., H, W-2)
    inner = (left * side + mid * centre) + right * side
    total = ((0.5 + outer[..., 2:, :]) + inner[..., 1:-1, :]) + outer[..., :-2, :]
    out = clips.clone()
    out[..., 1:-1, 1:-1] = total.clamp(0.0, 255.0).to(torch.uint8)  # uint8 cast truncates
    return out


def _degenerate(kind: str, clips: torch.Tensor) -> torch.Tensor:
    """The image ImageEnhance blends towards (broadcastable to the clips, uint8)."""
    if kind == "black":  # Brightness
        return torch.zeros((1, 1, 1, 1, 1), dtype=torch.uint8, device=clips.device)
    if kind == "smooth":  # Sharpness
        return _smooth(clips)
    grey = _grey(clips)
    if kind == "grey":  # Color: convert("L").convert("RGB")
        return grey.to(torch.uint8).unsqueeze(2)
    # Contrast: int(mean + 0.5) of the "L" frame, PIL's float64 mean of the histogram
    total = grey.sum(dim=(-2, -1), dtype=torch.int64).double()
    mean = total / torch.full_like(total, grey.shape[-2] * grey.shape[-1])  # CUDA would
    # multiply by the reciprocal of a Python scalar divisor: inexact
    return (mean + 0.5).floor().to(torch.uint8).view(*grey.shape[:2], 1, 1, 1)


def _blend(degenerate: torch.Tensor, clips: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """PIL's ImagingBlend: float32 `in1 + alpha * (in2 - in1)` (alpha a C float), clamped to
    0..255 and truncated."""
    alpha = _per_clip(factors, clips, torch.float32)
    diff = (clips.to(torch.int16) - degenerate.to(torch.int16)).float()
    value = degenerate.float() + alpha * diff  # two roundings, as the C code (no fma)
    return value.clamp(0.0, 255.0).to(torch.uint8)


# ----------------------------------------------------------------------------------------
# geometric ops: PIL's Image.transform(AFFINE) with an inverse matrix per clip


def _rotation_matrix(degrees: float, width: int, height: int) -> tuple[float, ...]:
    """Image.rotate's inverse matrix, also for the multiples of 90 degrees that
    `affine_matrix` leaves out: PIL copies or transposes there, and warping with this exact
    integer matrix gives the same pixels (every sample lands on a pixel centre)."""
    angle = -math.radians(degrees % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def _geometric(
    name: str,
    clips: torch.Tensor,
    args: Sequence[tuple],
    resample: Sequence[int],
    fill: tuple[int, int, int],
) -> torch.Tensor:
    """Warp each clip with its own matrix, one batched warp per resampling kind present
    (identity matrices are copies, as in PIL)."""
    height, width = clips.shape[-2:]
    matrices = []
    for a in args:
        m = affine_matrix(Op(name, None, tuple(a), {}), width, height)
        matrices.append(tuple(m) if m is not None else _rotation_matrix(a[0], width, height))
    groups: dict[int, list[int]] = {}
    for i, (m, kind) in enumerate(zip(matrices, resample)):
        if kind not in (NEAREST, BILINEAR, BICUBIC):
            raise ValueError(f"apply_op: resample {kind} is not 0, 2 or 3 (PIL's ids)")
        if m != _IDENTITY:
            groups.setdefault(int(kind), []).append(i)
    if len(groups) == 1 and len(next(iter(groups.values()))) == clips.shape[0]:
        (kind,) = groups
        return _warp(clips, matrices, kind, fill)
    out = clips.clone()
    for kind, rows in groups.items():
        mats = [matrices[i] for i in rows]
        index = to_device(torch.tensor(rows), clips.device)
        out.index_copy_(0, index, _warp(clips.index_select(0, index), mats, kind, fill))
    return out


def _fixed(v: float) -> int:
    """Pillow's FIX: 16.16 fixed point, floor(v * 65536 + 0.5)."""
    return math.floor(v * 65536.0 + 0.5)


def _nearest_source(
    mats: Sequence[tuple[float, ...]], height: int, width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source column and row (N, H, W) int64 of each output pixel, PIL's NEAREST way:
    a matrix without rotation/shear terms takes ImagingScaleAffine (float64, first sample at
    c + a/2, then steps of `a`), any other affine_fixed (16.16 fixed point: exact integers).

    PIL adds the steps one by one; `c + a/2 + a * x` rounds once instead. The two can differ
    in the last bit of a coordinate, which moves a sample only if it lies within ~1e-13 of
    a pixel edge without being on it (a translation within 1e-13 of a half pixel). PIL's
    float fallback for frames beyond its fixed-point range (32768 pixels) is not covered.
    """
    m = to_device(torch.tensor(mats, dtype=torch.float64), device)
    a0, a1, a2, a3, a4, a5 = (m[:, k].view(-1, 1, 1) for k in range(6))
    xs = torch.arange(width, device=device, dtype=torch.float64).view(1, 1, width)
    ys = torch.arange(height, device=device, dtype=torch.float64).view(1, height, 1)
    scale_x = ((a2 + a0 * 0.5) + a0 * xs).floor().long()  # (N, 1, W)
    scale_y = ((a5 + a4 * 0.5) + a4 * ys).floor().long()  # (N, H, 1)
    fixed = [
        (_fixed(a[0]), _fixed(a[1]), _fixed(a[2] + a[0] * 0.5 + a[1] * 0.5),
         _fixed(a[3]), _fixed(a[4]), _fixed(a[5] + a[3] * 0.5 + a[4] * 0.5))
        for a in mats
    ]  # fmt: skip
    f = to_device(torch.tensor(fixed, dtype=torch.int64), device)
    f0, f1, f2, f3, f4, f5 = (f[:, k].view(-1, 1, 1) for k in range(6))
    xi = torch.arange(width, device=device).view(1, 1, width)
    yi = torch.arange(height, device=device).view(1, height, 1)
    fixed_x = torch.div(f2 + f1 * yi + f0 * xi, 65536, rounding_mode="floor")  # C's >> 16
    fixed_y = torch.div(f5 + f4 * yi + f3 * xi, 65536, rounding_mode="floor")
    scaling = to_device(torch.tensor([a[1] == 0 and a[3] == 0 for a in mats]), device)
    scaling = scaling.view(-1, 1, 1)
    src_x = torch.where(scaling, scale_x.expand(-1, height, -1), fixed_x)
    src_y = torch.where(scaling, scale_y.expand(-1, -1, width), fixed_y)
    return src_x, src_y


def _horner(p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor,
            d: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """p1 + d * (p2 + d * (p3 + d * p4)) in float64 (`d`'s type), one rounding per step as
    in C; in place after the first product (a batch of clips is large)."""
    v = p4 * d
    return v.add_(p3).mul_(d).add_(p2).mul_(d).add_(p1)


def _cubic_row(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor,
               d: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Pillow's BICUBIC macro (cubic convolution, a = -1) across 4 int16 taps: its p terms
    are exact integers, so int16 gives the same values at a quarter of float64's traffic."""
    p2 = v3 - v1
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p4 = (v2 - v1).sub_(v3).add_(v4)
    return _horner(v2, p2, p3, p4, d)  # the int16 terms promote to float64 exactly


def _cubic_column(v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor,
                  d: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The BICUBIC macro across 4 float64 row values, in the C order of operations
    (`-v1 + v3` is `v3 - v1` exactly)."""
    p3 = (v1 - v2).mul_(2).add_(v3).sub_(v4)
    p4 = (v2 - v1).sub_(v3).add_(v4)
    return _horner(v2, v3 - v1, p3, p4, d)


def _warp(
    clips: torch.Tensor, mats: Sequence[tuple[float, ...]], kind: int, fill: tuple[int, int, int]
) -> torch.Tensor:
    """PIL's affine transform of every frame, clip i with inverse matrix `mats[i]`.

    Output pixel (x, y) samples the input at (a x' + b y' + c, d x' + e y' + f), with
    x' = x + 0.5, y' = y + 0.5 (float64, as Geometry.c). BILINEAR / BICUBIC: a sample
    outside [0, W) x [0, H) is `fill`; else subtract 0.5, floor, interpolate the clamped
    neighbours (BICUBIC: Pillow's a = -1 kernel) in float64 in PIL's operation order, clamp
    to 0..255 and truncate. float64 matters: PIL truncates, so a float32 product such as
    10 * 0.7f = 6.9999998 drops a level wherever a translation's constant fraction meets
    such a pixel difference (about 1 % of the pixels with float32). Memory: the float64
    temporaries are chunked over output pixels (`_FLOAT_BUDGET`).
    """
    n, t, c, height, width = clips.shape
    device = clips.device
    pixels = height * width
    src = clips.reshape(n, t * c, pixels)  # every frame and channel of a clip shares a map
    fill_col = to_device(torch.tensor(list(fill) * t, dtype=torch.uint8), device).view(1, t * c, 1)

    if kind == NEAREST:
        sx, sy = (v.reshape(n, 1, pixels) for v in _nearest_source(mats, height, width, device))
        inside = (sx >= 0) & (sx < width) & (sy >= 0) & (sy < height)
        index = sy.clamp(0, height - 1) * width + sx.clamp(0, width - 1)
        value = src.gather(2, index.expand(-1, t * c, -1))
        return torch.where(inside, value, fill_col).view(clips.shape)

    m = to_device(torch.tensor(mats, dtype=torch.float64), device)
    a0, a1, a2, a3, a4, a5 = (m[:, k].view(-1, 1, 1) for k in range(6))
    xs = torch.arange(width, device=device, dtype=torch.float64).view(1, 1, width) + 0.5
    ys = torch.arange(height, device=device, dtype=torch.float64).view(1, height, 1) + 0.5
    xin = (a0 * xs + a1 * ys + a2).view(n, 1, pixels)  # left to right as the C expression
    yin = (a3 * xs + a4 * ys + a5).view(n, 1, pixels)
    inside = (xin >= 0) & (xin < width) & (yin >= 0) & (yin < height)
    xin, yin = xin - 0.5, yin - 0.5
    x0, y0 = xin.floor(), yin.floor()
    dx, dy = xin - x0, yin - y0
    x0, y0 = x0.long(), y0.long()
    taps = (0, 1) if kind == BILINEAR else (-1, 0, 1, 2)
    cols = [(x0 + i).clamp_(0, width - 1) for i in taps]  # neighbours clamped to the frame
    rows = [(y0 + j).clamp_(0, height - 1).mul_(width) for j in taps]
    src16 = src.to(torch.int16)  # converted once, not each of the 4 or 16 gathers
    out = torch.empty_like(src)
    step = max(1, _FLOAT_BUDGET // (n * t * c))  # output pixels per chunk
    for lo in range(0, pixels, step):  # chunks of output pixels bound the float64 memory
        part = slice(lo, lo + step)
        size = min(step, pixels - lo)
        lines = []  # one horizontally interpolated value per source row
        for row in rows:
            v = [
                src16.gather(2, (row[..., part] + col[..., part]).expand(-1, t * c, size))
                for col in cols
            ]
            d = dx[..., part]
            if kind == BILINEAR:  # a + (b - a) * d, the difference an exact integer
                lines.append((v[1] - v[0]).mul(d).add_(v[0]))  # float64
            else:
                lines.append(_cubic_row(*v, d))
        d = dy[..., part]
        if kind == BILINEAR:
            value = (lines[1] - lines[0]).mul_(d).add_(lines[0])
        else:
            value = _cubic_column(*lines, d)
        value = value.clamp_(0.0, 255.0).to(torch.uint8)  # the uint8 cast truncates
        out[..., part] = torch.where(inside[..., part], value, fill_col)
    return out.view(clips.shape)
