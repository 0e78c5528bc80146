"""RandAugment for clips: one draw of timm's ops per clip, applied to every frame, and a fast
path that computes only the pixels the random resized crop keeps.

The reference runs RandAugment on the whole decoded frame (320x240) and then crops. Its
geometric ops (Rotate, Shear, Translate) are PIL affine warps, the dominant cost of a clip.
Each output pixel of a PIL affine warp depends only on its own source position, so warping
just the crop box (with the matrix shifted to the box origin) gives the same pixels as
warping the frame and cropping. Chains of ops are handled backwards: each geometric op
needs the bounding box of its output region's pre-image (plus the bicubic support) from the
op before it. Ops that need the whole frame (histogram or neighbourhood: AutoContrast,
Equalize, Contrast, Sharpness, ...) and everything before them run on whole frames.
"""

from __future__ import annotations

import math
import random
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from .clip_warp import warp_clip

# per-pixel ops (a LUT or a blend with a per-pixel image): the region in is the region out
POINTWISE = {
    "Invert", "Posterize", "PosterizeIncreasing", "PosterizeOriginal", "Solarize",
    "SolarizeIncreasing", "SolarizeAdd", "Color", "ColorIncreasing", "Brightness",
    "BrightnessIncreasing",
}  # fmt: skip
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"}
GEOMETRIC |= {"TranslateXRel", "TranslateYRel"}
_SUPPORT = 3  # pixels of bicubic support (PIL reads floor(x - 0.5) - 1 .. + 2), plus one

PIL_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}  # the filters PIL's affine transform accepts
Region = tuple[int, int, int, int]  # (x, y, w, h) in frame pixels


class Op(NamedTuple):
    name: str
    fn: object
    args: tuple
    kwargs: dict


def _posterize_to_black(img: Image.Image, *_args, **_kwargs) -> Image.Image:
    """Posterize keeping 0 bits: black, what older Pillow returned (the reference's result)."""
    return Image.new(img.mode, img.size)


def affine_matrix(op: Op, width: int, height: int) -> tuple[float, ...] | None:
    """PIL's inverse affine (output -> input) of a geometric op on a `width` x `height` frame,
    exactly as timm's op functions and `Image.rotate` build it; None if not an affine warp."""
    if op.name not in GEOMETRIC:
        return None
    v = op.args[0]
    if op.name == "ShearX":
        return (1, v, 0, 0, 1, 0)
    if op.name == "ShearY":
        return (1, 0, 0, v, 1, 0)
    if op.name in ("TranslateX", "TranslateXRel"):
        return (1, 0, v * width if op.name.endswith("Rel") else v, 0, 1, 0)
    if op.name in ("TranslateY", "TranslateYRel"):
        return (1, 0, 0, 0, 1, v * height if op.name.endswith("Rel") else v)
    if v % 360.0 in (0.0, 90.0, 180.0, 270.0):
        return None  # PIL copies / transposes there: not a warp
    angle = -math.radians(v % 360.0)
    a, b = round(math.cos(angle), 15), round(math.sin(angle), 15)
    d, e = round(-math.sin(angle), 15), round(math.cos(angle), 15)
    cx, cy = width / 2, height / 2
    return (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy)


def preimage_region(m: tuple[float, ...], out: Region, width: int, height: int) -> Region:
    """Frame pixels a PIL bicubic/bilinear warp `m` reads to fill region `out`, clipped to
    the frame (never empty: an all-fill output still needs a 1-pixel source)."""
    x, y, w, h = out
    corners = [(x + 0.5, y + 0.5), (x + w - 0.5, y + 0.5), (x + 0.5, y + h - 0.5)]
    corners.append((x + w - 0.5, y + h - 0.5))
    xs = [m[0] * cx + m[1] * cy + m[2] for cx, cy in corners]
    ys = [m[3] * cx + m[4] * cy + m[5] for cx, cy in corners]

    def span(lo: float, hi: float, size: int) -> tuple[int, int]:
        start = min(max(math.floor(lo) - _SUPPORT, 0), size - 1)
        stop = max(min(math.ceil(hi) + _SUPPORT, size), start + 1)
        return start, stop

    x0, x1 = span(min(xs), max(xs), width)
    y0, y1 = span(min(ys), max(ys), height)
    return x0, y0, x1 - x0, y1 - y0


class ClipRandAugment:
    """timm's RandAugment with one draw of ops and magnitudes for all frames of a clip, as the
    reference's list-aware copy of it (the same op and magnitude for every frame).

    The ops are drawn once from the global `random` / `np.random`, seeded from the clip's
    seed (and restored afterwards). The fill of the geometric ops is timm's default grey
    (128, 128, 128), as in the reference.
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic"):
        from timm.data.auto_augment import rand_augment_transform

        hparams: dict = {"translate_const": int(input_size * 0.45)}
        if interpolation in PIL_INTERP:  # else timm's default: random bilinear / bicubic
            hparams["interpolation"] = PIL_INTERP[interpolation]
        self.op = rand_augment_transform(config_str, hparams)

    def draw(self, seed: int) -> list[Op]:
        """The ops that fire for this clip, with their arguments (timm's rules)."""
        ra = self.op
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed)
            np.random.seed(seed)
            chosen = np.random.choice(
                ra.ops, ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights
            )
            fired = []
            for op in chosen:  # timm's AugmentOp.__call__, drawn once instead of per frame
                if op.prob < 1.0 and random.random() > op.prob:
                    continue
                magnitude = op.magnitude
                if op.magnitude_std == float("inf"):
                    magnitude = random.uniform(0, magnitude)
                elif op.magnitude_std > 0:
                    magnitude = random.gauss(magnitude, op.magnitude_std)
                magnitude = max(0.0, min(magnitude, op.magnitude_max or 10.0))
                args = op.level_fn(magnitude, op.hparams) if op.level_fn is not None else ()
                kwargs = dict(op.kwargs)
                if isinstance(kwargs.get("resample"), (list, tuple)):  # "random": once per clip
                    kwargs["resample"] = random.choice(kwargs["resample"])
                fn = op.aug_fn
                if op.name.startswith("Posterize") and args[0] <= 0:
                    fn = _posterize_to_black  # Pillow >= 10 rejects 0 bits; timm would raise
                fired.append(Op(op.name, fn, tuple(args), kwargs))
            return fired
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)

    def __call__(self, frames: list[Image.Image], seed: int) -> list[Image.Image]:
        """Whole frames, the reference's way (what `augment_box` must equal)."""
        for op in self.draw(seed):
            frames = [op.fn(frame, *op.args, **op.kwargs) for frame in frames]
        return frames

    def augment_box(
        self, frames: np.ndarray, seed: int, box: Region, flip: bool = False
    ) -> np.ndarray:
        """uint8 (T, H, W, 3) -> the box (x, y, w, h) of the augmented frames, (T, h, w, 3),
        contiguous, mirrored if `flip` (in the copy that is made anyway): equal to `__call__`
        on whole frames then cropping, computing only what is kept."""
        _, height, width, _ = frames.shape
        ops = self.draw(seed)
        whole = [i for i, op in enumerate(ops) if op.name not in POINTWISE | GEOMETRIC]
        matrices = [affine_matrix(op, width, height) for op in ops]
        whole += [i for i, op in enumerate(ops) if op.name in GEOMETRIC and matrices[i] is None]
        split = max(whole) + 1 if whole else 0  # ops before `split` need whole frames
        regions: list[Region] = [box]  # backwards: the region each tail op must produce
        for m in reversed(matrices[split:]):
            regions.insert(
                0, regions[0] if m is None else preimage_region(m, regions[0], width, height)
            )
        x, y, w, h = regions[0]
        if not ops:  # nothing fired
            return contiguous_clip(frames[:, y : y + h, x : x + w], flip)
        current = _Frames(frames)
        for op in ops[:split]:
            current.apply(op)
        current.crop((x, y, w, h))
        for k, op in enumerate(ops[split:]):
            m = matrices[split + k]
            if m is None:
                current.apply(op)
                continue
            (ix, iy, _, _), (ox, oy, ow, oh) = regions[k], regions[k + 1]
            a, b, c, d, e, f = m  # shift: output pixel (u, v) is frame pixel (u + ox, v + oy)
            shifted = (a, b, a * ox + b * oy + c - ix, d, e, d * ox + e * oy + f - iy)
            fill = _rgb(op.kwargs.get("fillcolor"))
            resample = op.kwargs.get("resample", Image.Resampling.BICUBIC)
            warped = warp_clip(current.array(), (ow, oh), shifted, resample, fill)
            if warped is not None:
                current.clip = warped
                continue
            current.images = [im.transform((ow, oh), Image.Transform.AFFINE, shifted, **op.kwargs)
                              for im in current.pil()]  # fmt: skip
        return contiguous_clip(current.array(), flip)


class _Frames:
    """A clip between RandAugment ops: one (T, h, w, 3) array or one PIL image per frame,
    converted only when an op needs the other form."""

    def __init__(self, clip: np.ndarray) -> None:
        self.clip: np.ndarray | None = clip
        self.images: list[Image.Image] | None = None

    def array(self) -> np.ndarray:
        if self.clip is None:
            self.clip = np.stack([np.asarray(im) for im in self.images])
        self.images = None
        return self.clip

    def pil(self) -> list[Image.Image]:
        if self.images is None:
            self.images = [Image.fromarray(np.ascontiguousarray(f)) for f in self.clip]
        self.clip = None
        return self.images

    def apply(self, op: Op) -> None:
        if op.name in POINTWISE:  # per pixel with fixed parameters: one image of all frames
            # stacked vertically gives every frame's pixels, in one call instead of T
            clip = self.array()
            t, h, w, _ = clip.shape
            tall = Image.fromarray(np.ascontiguousarray(clip).reshape(t * h, w, 3))
            self.clip = np.asarray(op.fn(tall, *op.args, **op.kwargs)).reshape(t, h, w, 3)
        else:
            self.images = [op.fn(im, *op.args, **op.kwargs) for im in self.pil()]

    def crop(self, region: Region) -> None:
        x, y, w, h = region
        if self.clip is not None:
            self.clip = self.clip[:, y : y + h, x : x + w]
        else:
            self.images = [im.crop((x, y, x + w, y + h)) for im in self.images]


def contiguous_clip(clip: np.ndarray, flip: bool = False) -> np.ndarray:
    """The (T, h, w, 3) uint8 clip contiguous and writable, mirrored left-right if `flip` (torch's
    flip kernel: numpy copies a reversed axis of 3-byte pixels about 8x slower)."""
    if not flip:  # a fresh, writable array (PIL's output and cache entries are read-only)
        return np.ascontiguousarray(clip) if clip.flags.writeable else np.array(clip)
    with warnings.catch_warnings():  # a read-only array (PIL's output, a cache entry) is
        warnings.simplefilter("ignore", UserWarning)  # only read here
        return torch.from_numpy(clip).flip(2).numpy()


def _rgb(fill: int | tuple | None) -> tuple[int, int, int]:
    """PIL's fill colour of an RGB image as an (r, g, b) triple (None: black)."""
    if fill is None:
        return (0, 0, 0)
    if isinstance(fill, int):
        return (fill, fill, fill)
    return tuple(int(v) for v in fill[:3])  # type: ignore[return-value]
