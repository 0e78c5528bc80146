"""Clip transforms: identical augmentation across frames, flip, crops, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from aptune.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    normalize,
    resize_short_side,
    sample_crop_box,
)

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)


def _constant_clip(t=6, h=48, w=64, seed=0):
    frame = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(frame[None], t, axis=0)


@pytest.mark.parametrize("seed", range(6))
def test_all_frames_augmented_identically(seed):
    """Every op but erasing is drawn once per clip (erasing is per frame, tested below)."""
    tf = TrainTransform(32, flip=True, auto_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.0)
    clip = tf(_constant_clip(), np.random.default_rng(seed))
    assert clip.shape == (3, 6, 32, 32) and clip.dtype == torch.float32
    for t in range(1, 6):
        torch.testing.assert_close(clip[:, t], clip[:, 0], rtol=0, atol=0)


def test_rand_augment_is_applied_and_keeps_global_rng():
    frames = _constant_clip()
    plain = TrainTransform(32, flip=False)
    strong = TrainTransform(32, flip=False, auto_augment="rand-m9-n4-mstd0.5-inc1")
    state = np.random.get_state()[1].copy()
    differs = [
        not torch.equal(
            plain(frames, np.random.default_rng(s)), strong(frames, np.random.default_rng(s))
        )
        for s in range(4)
    ]
    assert any(differs)
    assert np.array_equal(np.random.get_state()[1], state)


def _left_minus_right(tf, seed):
    half = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    half[:, :, 32:] = 255  # dark left half, bright right half
    clip = tf(half, np.random.default_rng(seed))
    return float(clip[:, :, :, :4].mean() - clip[:, :, :, -4:].mean())


def test_flip_only_when_enabled():
    no_flip = TrainTransform(16, flip=False)
    flip = TrainTransform(16, flip=True)
    assert all(_left_minus_right(no_flip, s) <= 1e-6 for s in range(30))
    assert any(_left_minus_right(flip, s) > 1.0 for s in range(30))


def test_crop_box_ranges():
    for s in range(50):
        x0, y0, x1, y1 = sample_crop_box(240, 320, 224, np.random.default_rng(s))
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
        assert 3 / 4 - 0.05 <= (x1 - x0) / (y1 - y0) <= 4 / 3 + 0.05


def test_normalize_values():
    grey = np.full((2, 4, 4, 3), 128, dtype=np.uint8)
    out = normalize(grey)
    assert out.shape == (3, 2, 4, 4)
    torch.testing.assert_close(out, ((128 / 255 - MEAN) / STD).expand(3, 2, 4, 4))


def _column_coded(h, w):
    frames = np.zeros((2, h, w, 3), dtype=np.uint8)
    frames[:] = np.arange(w, dtype=np.uint8)[None, None, :, None]
    frames += np.arange(h, dtype=np.uint8)[None, :, None, None] * (w == 32)  # rows if portrait
    return frames


def _first_value(view):
    return round(float((view[0, 0, 0, 0] * STD[0] + MEAN[0]).item() * 255))


def test_test_crops_spread_along_long_side():
    ev = EvalTransform(input_size=32, short_side_size=32, num_crops=3)
    landscape = ev.resize(_column_coded(32, 96))  # already short side 32: no resize
    assert [_first_value(ev.view(landscape, j)) for j in range(3)] == [0, 32, 64]
    portrait = ev.resize(_column_coded(96, 32))
    assert [_first_value(ev.view(portrait, j)) for j in range(3)] == [0, 32, 64]
    assert ev.view(landscape, 0).shape == (3, 2, 32, 32)
    centre = EvalTransform(input_size=32, short_side_size=32, num_crops=1)
    assert _first_value(centre.view(landscape, 0)) == 32


def test_resize_short_side():
    out = resize_short_side(np.zeros((3, 60, 100, 3), dtype=np.uint8), 48)
    assert out.shape == (3, 3, 48, 80) and out.dtype == torch.uint8


def test_crop_scale_one_keeps_the_whole_square_frame():
    from aptune.data.transforms import sample_crop_box

    rng = np.random.default_rng(0)
    for _ in range(20):
        assert sample_crop_box(64, 64, 64, rng, (1.0, 1.0)) == (0.0, 0.0, 64.0, 64.0)


@pytest.mark.parametrize("height,width", [(240, 320), (320, 240), (240, 427), (90, 160)])
def test_fallback_crop_never_leaves_the_frame(height, width):
    # crop_scale 1.0 sends every non-square frame to the fallback; 320x240 once produced a
    # box 1 px left of the frame (w_r / h_r is a hair above 4/3), which PIL rejects
    from aptune.data.transforms import TrainTransform, sample_crop_box

    rng = np.random.default_rng(0)
    for _ in range(50):
        x0, y0, x1, y1 = sample_crop_box(height, width, 224, rng, (1.0, 1.0))
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        aspect = (x1 - x0) / (y1 - y0)
        assert 3 / 4 - 1e-9 <= aspect <= 4 / 3 + 1e-9
    frames = np.zeros((2, height, width, 3), dtype=np.uint8)
    clip = TrainTransform(64, crop_scale=(1.0, 1.0), reprob=0.0)(frames, rng)
    assert clip.shape == (3, 2, 64, 64)


def test_crop_scale_is_validated_with_the_flag_name():
    from aptune.data import DataConfig

    with pytest.raises(ValueError, match="--crop_scale"):
        DataConfig(crop_scale=(0.5, 0.1))


# ---- the reference's training order (issue 17); box-only RandAugment: test_augment_ops ----


def test_reference_crop_box_is_an_integer_box_in_range():
    from aptune.data.transforms import reference_crop_box

    rng = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = reference_crop_box(240, 320, rng)
        assert all(isinstance(v, int) for v in (top, left, h, w))
        assert 0 <= top and top + h <= 240 and 0 <= left and left + w <= 320
        assert 0.08 * 0.9 <= h * w / (240 * 320) <= 1.0
        assert 0.75 - 0.02 <= w / h <= 1.3333 + 0.02
    # scale 1: every try fails on a non-square frame -> centre crop, ratio clamped
    assert reference_crop_box(240, 320, rng, (1.0, 1.0)) == (0, 0, 240, 320)  # in range
    assert reference_crop_box(240, 427, rng, (1.0, 1.0)) == (0, 53, 240, 320)  # round(240*1.3333)
    assert reference_crop_box(427, 240, rng, (1.0, 1.0)) == (53, 0, 320, 240)  # round(240/0.75)


def test_rand_augment_draw_equals_timm_per_frame():
    # one draw applied to every frame == timm's own call with the clip's seed before each frame
    import random

    from timm.data.auto_augment import rand_augment_transform

    from aptune.data.transforms import ClipRandAugment

    ra = ClipRandAugment("rand-m9-n4-mstd0.5-inc1", 32)
    timm_op = rand_augment_transform("rand-m9-n4-mstd0.5-inc1", {"translate_const": 14,
                                     "interpolation": Image.Resampling.BICUBIC})  # fmt: skip
    frames = [Image.fromarray(f) for f in _constant_clip(t=2, seed=5)]
    compared = 0
    for seed in range(40):
        got = ra(frames, seed)
        assert np.array_equal(*map(np.asarray, got))
        random.seed(seed)
        np.random.seed(seed)
        try:
            want = np.asarray(timm_op(frames[0]))
        except ValueError:  # timm's Posterize to 0 bits on Pillow >= 10: ours gives black
            assert any(n.startswith("Posterize") and a[0] == 0 for n, _, a, _ in ra.draw(seed))
            continue
        assert np.array_equal(np.asarray(got[0]), want)
        compared += 1
    assert compared >= 30
    assert all(op.kwargs["fillcolor"] == (128, 128, 128) for op in ra.op.ops)  # reference grey


def _rotate_only(tf):
    """Force RandAugment to one geometric op (Rotate 30 degrees, bilinear, grey fill)."""
    from timm.data.auto_augment import NAME_TO_OP

    from aptune.data.augment_ops import Op

    kwargs = {"fillcolor": (128, 128, 128), "resample": Image.Resampling.BILINEAR}
    tf._rand_augment.draw = lambda seed: [Op("Rotate", NAME_TO_OP["Rotate"], (30.1,), kwargs)]
    return kwargs


@pytest.mark.parametrize("seed", range(4))
def test_train_order_is_augment_full_frame_then_crop(seed):
    from aptune.data.transforms import reference_crop_box

    frames = np.stack([_constant_clip(t=1, h=96, w=128, seed=seed)[0]] * 2)  # (2, 96, 128, 3)
    frames[1] = 255 - frames[1]
    tf = TrainTransform(32, flip=True, auto_augment="rand-m9-n1-mstd0-inc1", crop_scale=(0.2, 0.3))
    kwargs = _rotate_only(tf)
    got = tf(frames, np.random.default_rng(seed))
    # the reference, step by step: rotate the whole frame, /255 and normalise the whole
    # frame, integer random resized crop, bilinear (align_corners False, no antialias), flip
    rng = np.random.default_rng(seed)
    rng.integers(2**31)  # the RandAugment seed
    top, left, h, w = reference_crop_box(96, 128, rng, (0.2, 0.3))
    flip = rng.random() < 0.5
    rotated = np.stack([np.asarray(Image.fromarray(f).rotate(30.1, **kwargs)) for f in frames])
    full = (torch.from_numpy(rotated).permute(3, 0, 1, 2) / 255 - MEAN) / STD  # (3, T, H, W)
    box = full[:, :, top : top + h, left : left + w]
    want = torch.nn.functional.interpolate(box, size=(32, 32), mode="bilinear", align_corners=False)
    want = want.flip(-1) if flip else want
    torch.testing.assert_close(got, want, atol=0.0176, rtol=0)  # uint8 resize: <= 1 level
    # the old order (crop first, then rotate the crop about its own centre) differs clearly
    crops = [Image.fromarray(f[top : top + h, left : left + w]) for f in frames]
    crops = [c.rotate(30.1, **kwargs) for c in crops]
    old = (torch.from_numpy(np.stack([np.asarray(c) for c in crops])).permute(3, 0, 1, 2) / 255
           - MEAN) / STD  # fmt: skip
    old = torch.nn.functional.interpolate(old, size=(32, 32), mode="bilinear", align_corners=False)
    old = old.flip(-1) if flip else old
    assert float((got - old).abs().mean()) > 0.1


def test_train_clip_deterministic_per_rng_and_samples_differ():
    tf = TrainTransform(32, auto_augment="rand-m4-n2-mstd0.2-inc1", reprob=0.25)
    frames = _constant_clip(t=4, h=60, w=80)
    a = tf(frames, np.random.default_rng(7))
    assert torch.equal(a, tf(frames, np.random.default_rng(7)))
    rng = np.random.default_rng(7)
    first, second = tf(frames, rng), tf(frames, rng)  # num_sample 2 draws twice from one rng
    assert torch.equal(first, a) and not torch.equal(first, second)


def test_erasing_is_per_frame_as_the_reference():
    """timm's RandomErasing on the (T, C, H, W) clip: each frame is erased with probability
    reprob on its own, with its own box (not one tube through the clip)."""
    import numpy as np
    import torch

    from aptune.data.transforms import erase_frames

    rng = np.random.default_rng(0)
    hits, boxes = [], set()
    for _ in range(200):
        clip = erase_frames(torch.full((3, 8, 32, 32), 5.0), rng, prob=0.25)
        erased = (clip != 5.0).any(dim=0)  # (T, H, W)
        hits += erased.flatten(1).any(dim=1).tolist()
        for t in range(8):
            if erased[t].any():
                rows, cols = torch.nonzero(erased[t], as_tuple=True)
                boxes.add((rows.min().item(), cols.min().item(), rows.max().item()))
    rate = sum(hits) / len(hits)
    assert 0.2 < rate < 0.3  # per-frame probability, 1600 frames
    assert len(boxes) > 100  # boxes differ from frame to frame
    clip = erase_frames(torch.zeros(3, 4, 16, 16), rng, prob=0.0)
    assert not clip.any()
