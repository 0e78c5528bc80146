"""Clip transforms in the reference's order (RandAugment on the decoded frames, normalise,
random resized crop, flip except for SSv2, random erasing); every random choice is
drawn once per clip and applied to all its frames.

Train: RandAugment (timm string) on the decoded frames at their own size, ImageNet
normalisation, random resized crop with an integer box and a bilinear resize without
antialiasing, horizontal flip, random erasing (per frame, as the reference). Test/val: short side to
`short_side_size` with OpenCV INTER_LINEAR semantics, crops along the long side.
Inputs are uint8 (T, H, W, 3) arrays; outputs float (3, T, S, S).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .augment_ops import ClipRandAugment, contiguous_clip
from .sampling import crop_starts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
_STD255 = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255
REFERENCE_RATIO = (0.75, 1.3333)  # the reference's literal aspect range (`asp`)


def normalize(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> ImageNet-normalised float32 (3, T, H, W), contiguous."""
    t = torch.as_tensor(frames)
    out = torch.empty((3, *t.shape[:3]), dtype=torch.float32)
    out.copy_(t.permute(3, 0, 1, 2))  # (3, T, H, W)
    return out.sub_(_MEAN255).div_(_STD255)


def sample_crop_box(
    height: int,
    width: int,
    input_size: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[float, float, float, float]:
    """Pre-training's crop (fine-tuning uses `reference_crop_box`): box (x0, y0, x1, y1) in
    input pixels of: short side resized to a random size in [256, 320] * input_size / 224,
    then a random resized crop of that (torchvision's rule).

    Mapping the crop back to the input lets each frame be resized once, not twice.
    """
    lo, hi = round(256 * input_size / 224), round(320 * input_size / 224)
    f = int(rng.integers(lo, hi + 1)) / min(height, width)  # short-side jitter factor
    h_r, w_r = height * f, width * f
    area = h_r * w_r
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= w_r and 0 < h <= h_r:
            y0 = int(rng.integers(0, int(h_r - h) + 1))
            x0 = int(rng.integers(0, int(w_r - w) + 1))
            break
    else:  # fallback: centre crop with the ratio clamped into range (never past the frame:
        # 320x240 has w_r / h_r a hair above 4/3 in floating point)
        in_ratio = w_r / h_r
        if in_ratio < ratio[0]:
            w, h = w_r, min(h_r, w_r / ratio[0])
        elif in_ratio > ratio[1]:
            h, w = h_r, min(w_r, h_r * ratio[1])
        else:
            w, h = w_r, h_r
        y0, x0 = (h_r - h) / 2, (w_r - w) / 2
    return (x0 / f, y0 / f, min((x0 + w) / f, width), min((y0 + h) / f, height))


EraseBox = tuple[int, int, int, int, int]  # (frame, top, left, h, w) in output pixels


def draw_erase_boxes(
    rng: np.random.Generator, frames: int, height: int, width: int, prob: float, count: int = 1
) -> tuple[int, tuple[EraseBox, ...]]:
    """The random choices of :func:`erase_frames` (a fill seed, then the boxes), drawn
    before the clip exists so the boxes can travel with the decoded frames to another
    device (``--aug_device``)."""
    area = height * width
    fill_seed = int(rng.integers(2**31))
    boxes: list[EraseBox] = []
    for t in range(frames):
        if rng.random() >= prob:
            continue
        for _ in range(int(rng.integers(1, count + 1))):
            for _attempt in range(10):
                target = area * rng.uniform(0.02, 1 / 3)
                aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
                h = round(math.sqrt(target * aspect))
                w = round(math.sqrt(target / aspect))
                if w < width and h < height:
                    top = int(rng.integers(0, height - h + 1))
                    left = int(rng.integers(0, width - w + 1))
                    boxes.append((t, top, left, h, w))
                    break
    return fill_seed, tuple(boxes)


def apply_erase(
    clip: torch.Tensor, fill_seed: int, boxes: tuple[EraseBox, ...], mode: str = "pixel"
) -> torch.Tensor:
    """Fill `boxes` of a (3, T, H, W) clip in order (``pixel``: per-pixel normal noise;
    ``rand``: one normal colour per box; ``const``: zero, the mean after normalisation)."""
    gen = torch.Generator().manual_seed(fill_seed)
    for t, top, left, h, w in boxes:
        if mode == "pixel":
            fill = torch.randn((3, h, w), generator=gen)
        elif mode == "rand":
            fill = torch.randn((3, 1, 1), generator=gen)
        else:  # "const"
            fill = torch.zeros((3, 1, 1))
        clip[:, t, top : top + h, left : left + w] = fill
    return clip


def erase_frames(
    clip: torch.Tensor, rng: np.random.Generator, prob: float, mode: str = "pixel", count: int = 1
) -> torch.Tensor:
    """Random erasing as the reference applies it: timm's ``RandomErasing`` gets the clip as
    a (T, C, H, W) batch, so each frame is erased with probability ``prob``, with its own
    1..``count`` boxes (area 2%-33% of the frame, log-uniform aspect 0.3-3.3, 10 tries)
    and its own fill (``pixel``: per-pixel normal noise; ``rand``: one colour; ``const``:
    zero, i.e. the mean after normalisation)."""
    _, frames, height, width = clip.shape  # (3, T, H, W)
    fill_seed, boxes = draw_erase_boxes(rng, frames, height, width, prob, count)
    return apply_erase(clip, fill_seed, boxes, mode)


def reference_crop_box(
    height: int,
    width: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = REFERENCE_RATIO,
) -> tuple[int, int, int, int]:
    """Integer box (top, left, h, w) of the reference's random resized crop on the frame
    itself (no short-side jitter): 10 tries of area `scale` and log-uniform `ratio`, then
    the centre crop with the ratio clamped (VideoMAE's `_get_param_spatial_crop`)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = rng.uniform(*scale) * area
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def resize_bilinear(clip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of the last two dims, half-pixel centres, no antialiasing (the
    reference's `F.interpolate(..., align_corners=False)`, = OpenCV INTER_LINEAR)."""
    lead = clip.shape[:-2]
    flat = clip.reshape(-1, 1, *clip.shape[-2:])  # (N, 1, h, w)
    out = F.interpolate(flat, size=size, mode="bilinear", align_corners=False, antialias=False)
    return out.reshape(*lead, *size)


class PlannedOp(NamedTuple):
    """One RandAugment op as the device path applies it (see ``tensor_ops.apply_op``)."""

    name: str
    args: tuple
    resample: int  # PIL resampling of the geometric ops
    fill: tuple[int, int, int]


@dataclass(frozen=True)
class ClipPlan:
    """Every random choice of one training clip. Drawn from the item's generator in the
    order the reference draws them, so applying a plan in a worker (:meth:`TrainTransform.apply`)
    or on the training device (``--aug_device``) starts from the same choices."""

    seed: int  # RandAugment's draw of ops and magnitudes (0 without RandAugment)
    box: tuple[int, int, int, int]  # (top, left, h, w) of the random resized crop
    flip: bool
    fill_seed: int = 0  # random erasing: the fill's generator and the boxes
    erase: tuple[EraseBox, ...] = ()
    ops: tuple[PlannedOp, ...] = ()  # the drawn RandAugment ops (device path only)


@dataclass
class TrainTransform:
    """Training augmentation of one clip in the reference's order; `rng` decides every
    random choice (RandAugment draws come from a seed taken from `rng`)."""

    input_size: int = 224
    flip: bool = True
    auto_augment: str | None = None
    interpolation: str = "bicubic"  # RandAugment's geometric ops (--train_interpolation)
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area range of the random resized crop
    whole_frames: bool = False  # RandAugment on whole frames, literally (tests, benchmarks)

    def __post_init__(self) -> None:
        self._rand_augment = (
            ClipRandAugment(self.auto_augment, self.input_size, self.interpolation)
            if self.auto_augment
            else None
        )

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        _, height, width, _ = frames.shape  # (T, H, W, 3)
        return self.apply(frames, self.plan(len(frames), height, width, rng))

    def plan(
        self, frames: int, height: int, width: int, rng: np.random.Generator, ops: bool = False
    ) -> ClipPlan:
        """The clip's random choices; ``ops=True`` also lists the RandAugment ops drawn from
        the seed (what the device path needs; the worker path draws them itself)."""
        seed = int(rng.integers(2**31)) if self._rand_augment is not None else 0
        box = reference_crop_box(height, width, rng, tuple(self.crop_scale))
        flip = bool(self.flip and rng.random() < 0.5)
        fill_seed, erase = 0, ()
        if self.reprob > 0:
            size = self.input_size
            fill_seed, erase = draw_erase_boxes(rng, frames, size, size, self.reprob, self.recount)
        drawn: tuple[PlannedOp, ...] = ()
        if ops and self._rand_augment is not None:
            drawn = tuple(
                PlannedOp(op.name, tuple(op.args), int(op.kwargs.get("resample", 3)),
                          tuple(op.kwargs.get("fillcolor", (128, 128, 128))))
                for op in self._rand_augment.draw(seed)
            )  # fmt: skip
        return ClipPlan(seed, box, flip, fill_seed, erase, drawn)

    def apply(self, frames: np.ndarray, plan: ClipPlan) -> torch.Tensor:
        """uint8 (T, H, W, 3) -> normalised float (3, T, S, S) following `plan`."""
        top, left, h, w = plan.box
        size = (self.input_size, self.input_size)
        if self.whole_frames:
            clip = self._literal(frames, plan.seed, plan.box)
            clip = clip.flip(-1) if plan.flip else clip
        else:
            if self._rand_augment is not None:  # the same pixels, computing only the box
                box = self._rand_augment.augment_box(
                    frames, plan.seed, (left, top, w, h), plan.flip
                )
            else:
                box = frames[:, top : top + h, left : left + w]
                box = contiguous_clip(box, plan.flip)
            # flipping before the resize is the same: bilinear resizing is mirror-symmetric
            t = torch.from_numpy(box).permute(0, 3, 1, 2)  # (T, 3, h, w), channels-last
            # uint8 until the last step: bilinear on uint8 (channels-last: the fast kernel),
            # then normalise the S x S result; rounding moves a pixel by at most 1/255
            t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=False)
            clip = normalize(t.permute(0, 2, 3, 1))  # (T, S, S, 3) -> (3, T, S, S)
        if plan.erase:
            clip = apply_erase(clip, plan.fill_seed, plan.erase, self.remode)
        return clip

    def _literal(self, frames: np.ndarray, seed: int, box: tuple[int, ...]) -> torch.Tensor:
        """The reference's steps as it runs them: RandAugment on whole frames, normalise the
        whole float frame, crop, bilinear resize in float (tests and benchmarks)."""
        top, left, h, w = box
        if self._rand_augment is not None:
            images = self._rand_augment([Image.fromarray(f) for f in frames], seed)
            frames = np.stack([np.asarray(im) for im in images])
        clip = normalize(frames)[:, :, top : top + h, left : left + w]  # (3, T, h, w)
        return resize_bilinear(clip, (self.input_size, self.input_size)).contiguous()


def short_side_sizes(height: int, width: int, size: int) -> tuple[int, int]:
    """(h, w) with the short side `size` and the long side floored, as the reference's
    `get_resize_sizes`: 320x240 -> 298x224."""
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize_short_side(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, h, w), short side `size`, OpenCV INTER_LINEAR
    semantics (bilinear, half-pixel centres, no antialiasing, rounded); no resize when the
    short side already equals `size`."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    height, width = t.shape[-2:]
    if (width <= height and width == size) or (height <= width and height == size):
        return t
    out = resize_bilinear(t.float(), short_side_sizes(height, width, size))
    return out.round_().clamp_(0, 255).to(torch.uint8)


def spatial_view(resized: torch.Tensor, input_size: int, crop: int, num_crops: int) -> torch.Tensor:
    """Crop `crop` of `num_crops` of a resized uint8 (T, 3, h, w) clip, placed along the
    long side by `crop_starts` and centred on the short side; normalised float (3, T, S, S)."""
    height, width = resized.shape[-2:]
    if height >= width:  # the reference crops along the height when h >= w
        top = crop_starts(height, input_size, num_crops)[crop]
        left = crop_starts(width, input_size, 1)[0]
    else:
        top = crop_starts(height, input_size, 1)[0]
        left = crop_starts(width, input_size, num_crops)[crop]
    view = resized[:, :, top : top + input_size, left : left + input_size]
    return normalize(view.permute(0, 2, 3, 1))  # (T, S, S, 3) -> (3, T, S, S)


@dataclass
class EvalTransform:
    """Val/test: short side to `short_side_size` (at least `input_size`), then crop views."""

    input_size: int = 224
    short_side_size: int = 224
    num_crops: int = 1

    def resize(self, frames: np.ndarray) -> torch.Tensor:
        return resize_short_side(frames, max(self.short_side_size, self.input_size))

    def view(self, resized: torch.Tensor, crop: int) -> torch.Tensor:
        return spatial_view(resized, self.input_size, crop, self.num_crops)
