"""Clip transforms: every random choice is drawn once per clip and applied to all its frames.

Train: random short-side jitter + random resized crop (fused into one resize per frame),
horizontal flip, timm RandAugment, ImageNet normalisation, random erasing (a tube: the same
box and noise in every frame). Test/val: short side to `short_side_size`, crops spread
along the long side. Inputs are uint8 (T, H, W, 3) arrays; outputs float (3, T, S, S).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .sampling import crop_starts

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN255 = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
_STD255 = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255
_PIL_INTERP = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


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
    """Box (x0, y0, x1, y1) in input pixels of: short side resized to a random size in
    [256, 320] * input_size / 224, then a random resized crop of that (torchvision's rule).

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


class ClipRandAugment:
    """timm's RandAugment with one draw of ops and magnitudes for all frames of a clip.

    timm draws from the global `random` / `np.random`; both are seeded from the clip's seed
    before each frame (and restored afterwards), so every frame sees the same choices.
    """

    def __init__(self, config_str: str, input_size: int, interpolation: str = "bicubic"):
        from timm.data.auto_augment import rand_augment_transform

        hparams = {
            "translate_const": int(input_size * 0.45),
            "img_mean": tuple(min(255, round(255 * m)) for m in IMAGENET_MEAN),
        }
        if interpolation in _PIL_INTERP:
            hparams["interpolation"] = _PIL_INTERP[interpolation]
        self.op = rand_augment_transform(config_str, hparams)

    def __call__(self, frames: list[Image.Image], seed: int) -> list[Image.Image]:
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            out = []
            for frame in frames:
                random.seed(seed)
                np.random.seed(seed)
                out.append(self.op(frame))
            return out
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def erase_tube(
    clip: torch.Tensor, rng: np.random.Generator, mode: str = "pixel", count: int = 1
) -> torch.Tensor:
    """Random erasing (timm's box rule: area 2%-33%, log-ratio 0.3-3.3) with the same box
    and fill in every frame, so the erased region is a tube and frames stay consistent."""
    _, _, height, width = clip.shape  # (3, T, H, W)
    area = height * width
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for _ in range(count):
        for _attempt in range(10):
            target = area * rng.uniform(0.02, 1 / 3)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if 0 < w < width and 0 < h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                if mode == "pixel":
                    fill = torch.randn((3, 1, h, w), generator=gen)
                elif mode == "rand":
                    fill = torch.randn((3, 1, 1, 1), generator=gen)
                else:  # "const"
                    fill = torch.zeros((3, 1, 1, 1))
                clip[:, :, top : top + h, left : left + w] = fill
                break
    return clip


@dataclass
class TrainTransform:
    """Training augmentation of one clip; `rng` decides every random choice."""

    input_size: int = 224
    flip: bool = True
    auto_augment: str | None = None
    interpolation: str = "bicubic"
    reprob: float = 0.0
    remode: str = "pixel"
    recount: int = 1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area range of the random resized crop

    def __post_init__(self) -> None:
        self._resample = _PIL_INTERP.get(self.interpolation, Image.Resampling.BICUBIC)
        self._rand_augment = (
            ClipRandAugment(self.auto_augment, self.input_size, self.interpolation)
            if self.auto_augment
            else None
        )

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        _, height, width, _ = frames.shape  # (T, H, W, 3)
        box = sample_crop_box(height, width, self.input_size, rng, tuple(self.crop_scale))
        flip = self.flip and rng.random() < 0.5
        seed = int(rng.integers(2**31))
        size = (self.input_size, self.input_size)
        images = [Image.fromarray(f).resize(size, self._resample, box=box) for f in frames]
        if flip:
            images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
        if self._rand_augment is not None:
            images = self._rand_augment(images, seed)
        clip = normalize(np.stack([np.asarray(im) for im in images]))  # (3, T, S, S)
        if self.reprob > 0 and rng.random() < self.reprob:
            clip = erase_tube(clip, rng, self.remode, self.recount)
        return clip


def resize_short_side(frames: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> uint8 (T, 3, h, w) with min(h, w) == size (bilinear, antialias)."""
    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)
    height, width = t.shape[-2:]
    if min(height, width) == size:
        return t
    if height <= width:
        new = (size, max(round(width * size / height), size))
    else:
        new = (max(round(height * size / width), size), size)
    return TF.resize(t.contiguous(), list(new), antialias=True)


def spatial_view(resized: torch.Tensor, input_size: int, crop: int, num_crops: int) -> torch.Tensor:
    """Crop `crop` of `num_crops` of a resized uint8 (T, 3, h, w) clip, evenly placed along the
    long side and centred on the short side; returns normalised float (3, T, S, S)."""
    height, width = resized.shape[-2:]
    if height > width:
        top, left = crop_starts(height, input_size, num_crops)[crop], (width - input_size) // 2
    else:
        top, left = (height - input_size) // 2, crop_starts(width, input_size, num_crops)[crop]
    top, left = max(top, 0), max(left, 0)
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
