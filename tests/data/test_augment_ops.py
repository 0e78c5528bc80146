"""RandAugment on the crop box only equals RandAugment on whole frames and then the crop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP

from aptune.data.augment_ops import ClipRandAugment, Op, _posterize_to_black, preimage_region
from aptune.data.transforms import TrainTransform, reference_crop_box

BICUBIC = {"fillcolor": (128, 128, 128), "resample": Image.Resampling.BICUBIC}
BILINEAR = {"fillcolor": (128, 128, 128), "resample": Image.Resampling.BILINEAR}


def _frames(t=2, h=72, w=96, seed=0) -> np.ndarray:
    """Textured frames (noise + a gradient): any shifted or mis-sampled pixel shows."""
    rng = np.random.default_rng(seed)
    grad = np.linspace(0, 120, w)[None, :, None] + np.linspace(0, 80, h)[:, None, None]
    return np.clip(rng.integers(0, 120, (t, h, w, 3)) + grad, 0, 255).astype(np.uint8)


def _whole_then_crop(ra, frames, seed, box):
    x, y, w, h = box
    out = ra([Image.fromarray(f) for f in frames], seed)
    return np.stack([np.asarray(im) for im in out])[:, y : y + h, x : x + w]


def _assert_same_pixels(fast: np.ndarray, slow: np.ndarray, context) -> None:
    """Equal up to floating-point ties: the shifted matrix rounds differently in the last
    bit, which can move a sample exactly on a pixel edge (1 level) or on the frame's edge
    (fill or not: a rare single pixel)."""
    assert fast.shape == slow.shape, context
    diff = np.abs(fast.astype(int) - slow.astype(int))
    assert diff.mean() < 0.05 and (diff > 1).mean() <= 0.002, (context, diff.max(), diff.mean())


def _op(name, *args, kwargs=BICUBIC):
    return Op(name, NAME_TO_OP[name], args, kwargs)


CHAINS = {  # magnitudes like drawn ones (not round numbers, which hit pixel edges exactly)
    "rotate": [_op("Rotate", 23.17)],
    "rotate-negative-bilinear": [_op("Rotate", -17.31, kwargs=BILINEAR)],
    "shear-then-rotate": [_op("ShearX", 0.2113), _op("Rotate", 12.71)],
    "translate-then-shear-y": [_op("TranslateXRel", -0.2873), _op("ShearY", -0.2391)],
    "point-geometric-point": [_op("Solarize", 100), _op("Rotate", 8.113), _op("Color", 1.6)],
    "equalize-after-rotate": [_op("Rotate", 15.37), _op("Equalize")],  # whole frames
    "contrast-then-translate": [_op("ContrastIncreasing", 1.5), _op("TranslateYRel", 0.3917)],
    "three-warps": [_op("ShearY", 0.2893), _op("TranslateXRel", 0.1789), _op("Rotate", -29.61)],
    "rotate-0": [_op("Rotate", 0.0), _op("Invert")],
}


@pytest.mark.parametrize("chain", list(CHAINS))
def test_box_only_equals_whole_frames_then_crop(chain, monkeypatch):
    ra = ClipRandAugment("rand-m9-n2-mstd0.5-inc1", 32)
    monkeypatch.setattr(ra, "draw", lambda seed: CHAINS[chain])
    frames = _frames()
    rng = np.random.default_rng(1)
    boxes = [(0, 0, 96, 72), (0, 0, 20, 15), (80, 60, 16, 12), (5, 40, 60, 30)]
    for _ in range(12):
        top, left, h, w = reference_crop_box(72, 96, rng)
        boxes.append((left, top, w, h))
    for box in boxes:
        fast = ra.augment_box(frames, 0, box)
        slow = _whole_then_crop(ra, frames, 0, box)
        assert fast.shape == (2, box[3], box[2], 3)
        _assert_same_pixels(fast, slow, (chain, box))


@pytest.mark.parametrize("config", ["rand-m9-n4-mstd0.5-inc1", "rand-m4-n2-mstd0.2-inc1"])
def test_box_only_equals_whole_frames_for_drawn_ops(config):
    ra = ClipRandAugment(config, 32, Image.Resampling.BICUBIC)
    frames = _frames(seed=3)
    rng = np.random.default_rng(2)
    for seed in range(40):
        top, left, h, w = reference_crop_box(72, 96, rng)
        box = (left, top, w, h)
        slow = _whole_then_crop(ra, frames, seed, box)
        _assert_same_pixels(ra.augment_box(frames, seed, box), slow, (seed, box))


def test_preimage_region_covers_the_bicubic_support_and_stays_in_the_frame():
    m = (1, 0, -50.0, 0, 1, 0)  # translate by 50 px: output x reads input x - 50
    assert preimage_region(m, (60, 10, 20, 20), 96, 72) == (7, 7, 26, 26)
    assert preimage_region(m, (0, 0, 10, 10), 96, 72) == (0, 0, 1, 13)  # all fill: 1 px wide
    x, y, w, h = preimage_region((1, 0.3, 0, 0, 1, 0), (0, 0, 96, 72), 96, 72)
    assert (x, y, w, h) == (0, 0, 96, 72)


@pytest.mark.parametrize("seed", range(6))
def test_train_transform_fast_path_equals_the_literal_reference_order(seed):
    frames = _frames(t=3, h=60, w=80, seed=seed)
    fast = TrainTransform(32, auto_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.5)
    literal = TrainTransform(32, auto_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.5,
                             whole_frames=True)  # fmt: skip
    for k in range(5):
        a = fast(frames, np.random.default_rng(100 * seed + k))
        b = literal(frames, np.random.default_rng(100 * seed + k))
        diff = (a - b).abs()  # uint8 resize: one level is at most 1 / 255 / 0.224 = 0.01751
        assert float((diff > 0.0176).float().mean()) <= 0.002 and float(diff.mean()) < 0.006


POINT_OPS = [  # every per-pixel op of timm's RandAugment, with drawn-like arguments
    _op("Invert"), _op("PosterizeIncreasing", 3),
    Op("PosterizeIncreasing", _posterize_to_black, (0,), {}),  # 0 bits: black (see draw)
    _op("SolarizeIncreasing", 171), _op("SolarizeAdd", 37), _op("ColorIncreasing", 1.37),
    _op("ColorIncreasing", 0.61), _op("BrightnessIncreasing", 1.29),
    _op("BrightnessIncreasing", 0.71),
]  # fmt: skip


@pytest.mark.parametrize("op", POINT_OPS, ids=lambda op: f"{op.name}{op.args}")
@pytest.mark.parametrize("before_whole_frame_op", [False, True])
def test_point_ops_on_all_frames_at_once_equal_pil_frame_by_frame(op, before_whole_frame_op,
                                                                  monkeypatch):  # fmt: skip
    """Point ops run once on the frames stacked into one image: byte for byte PIL's per
    frame, in the tail (on the box) and before a whole-frame op (on whole frames)."""
    chain = [op, _op("Equalize")] if before_whole_frame_op else [op]
    ra = ClipRandAugment("rand-m9-n2-mstd0.5-inc1", 32)
    monkeypatch.setattr(ra, "draw", lambda seed: chain)
    frames = _frames(t=3, seed=4)
    for box in [(0, 0, 96, 72), (7, 5, 40, 30)]:
        fast = ra.augment_box(frames, 0, box, flip=True)
        slow = _whole_then_crop(ra, frames, 0, box)[:, :, ::-1]
        assert np.array_equal(fast, slow), box
        assert fast.flags.writeable and fast.flags.c_contiguous
