"""warp_clip equals PIL's bicubic affine transform byte for byte on every frame, for the warps
RandAugment draws along one axis, and hands everything else back to PIL."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from timm.data.auto_augment import NAME_TO_OP

from aptune.data import clip_warp
from aptune.data.augment_ops import ClipRandAugment, Op
from aptune.data.clip_warp import warp_clip
from aptune.data.transforms import TrainTransform

BICUBIC = Image.Resampling.BICUBIC
GREY = (128, 128, 128)


def _frames(t: int = 3, h: int = 60, w: int = 80, seed: int = 0) -> np.ndarray:
    """Noise, a flat band, shallow ramps (many interpolated values land on or near an
    integer: the float32 sum alone would floor some of them wrong) and saturated bands (the
    cubic overshoots past 0 and 255 there)."""
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 256, (t, h, w, 3)).astype(np.uint8)
    f[:, : h // 6] = 17
    f[:, h // 6 : h // 3] = (np.arange(w)[None, :, None] // 3).astype(np.uint8)
    f[:, h // 3 : h // 2] = (np.arange(w)[None, :, None] // 2 + 7 * np.arange(3)).astype(np.uint8)
    f[:, h // 2 : h // 2 + 4, ::2] = 255
    f[:, h // 2 : h // 2 + 4, 1::2] = 0
    return f


def _pil(frames, size, matrix, fill=GREY, resample=BICUBIC) -> np.ndarray:
    return np.stack(
        [
            np.asarray(
                Image.fromarray(f).transform(
                    size, Image.Transform.AFFINE, matrix, resample, fillcolor=fill
                )
            )
            for f in frames
        ]
    )


def _drawn_matrices(rng: np.random.Generator, width: int, height: int) -> list[tuple]:
    """Matrices as timm builds them for ShearX/Y and TranslateX/Y(Rel), at drawn magnitudes
    of both signs, plus whole-pixel translations and shifted (box-relative) origins."""
    out = []
    for _ in range(6):
        shear = float(rng.normal(0, 0.15))
        move = float(rng.normal(0, 0.2))
        dx, dy = float(rng.uniform(-9, 9)), float(rng.uniform(-9, 9))  # box origins: whole
        ix, iy = float(rng.integers(-9, 9)), float(rng.integers(-9, 9))  # pixels across the axis
        out += [
            (1, shear, dx, 0, 1, iy),  # ShearX, shifted to a box origin
            (1, 0, ix, shear, 1, dy),  # ShearY
            (1, 0, move * width, 0, 1, iy),  # TranslateXRel
            (1, 0, ix, 0, 1, move * height),  # TranslateYRel
        ]
    out += [(1, 0, 7.0, 0, 1, -3.0), (1, 0, 0.5, 0, 1, 0), (1, 0, 0, 0, 1, 0)]
    return out


@pytest.mark.parametrize("seed", range(4))
def test_one_axis_warps_equal_pil_byte_for_byte(seed):
    rng = np.random.default_rng(seed)
    frames = _frames(t=3, h=int(rng.integers(30, 70)), w=int(rng.integers(40, 90)), seed=seed)
    height, width = frames.shape[1:3]
    for matrix in _drawn_matrices(rng, width, height):
        size = (int(rng.integers(10, width + 20)), int(rng.integers(10, height + 20)))
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        fast = warp_clip(frames, size, matrix, BICUBIC, fill)
        assert fast is not None, matrix
        slow = _pil(frames, size, matrix, fill)
        assert fast.shape == slow.shape == (3, size[1], size[0], 3)
        assert np.array_equal(fast, slow), (matrix, size, int((fast != slow).sum()))


def test_the_exact_recompute_is_what_makes_it_byte_exact(monkeypatch):
    """Without the double-precision recompute near integers (threshold 0) the float32 sum
    floors some values one level off on this content: the test content reaches that path."""
    frames = _frames(t=4, h=60, w=80, seed=5)
    matrices = [(1, 0.173, -6.3, 0, 1, 2.0), (1, 0, 12.37, 0, 1, 0), (1, 0, 0, -0.21, 1, 4.71)]
    monkeypatch.setattr(clip_warp, "_NEAR_INTEGER", 0.0)
    wrong = sum(
        int((warp_clip(frames, (70, 50), m, BICUBIC, GREY) != _pil(frames, (70, 50), m)).sum())
        for m in matrices
    )
    assert wrong > 0
    monkeypatch.undo()
    for m in matrices:
        assert np.array_equal(
            warp_clip(frames, (70, 50), m, BICUBIC, GREY), _pil(frames, (70, 50), m)
        )


def test_everything_outside_is_fill_and_partial_outside_matches():
    frames = _frames(t=2, h=20, w=30)
    out = warp_clip(frames, (12, 9), (1, 0, 500.0, 0, 1, 0), BICUBIC, (1, 2, 3))
    assert out.shape == (2, 9, 12, 3) and (out == np.array([1, 2, 3], np.uint8)).all()
    m = (1, 0, -20.6, 0, 1, 0)  # the left part of the output reads before column 0
    assert np.array_equal(warp_clip(frames, (30, 20), m, BICUBIC, GREY), _pil(frames, (30, 20), m))


@pytest.mark.parametrize(
    "matrix, resample",
    [
        ((0.96, -0.28, 5.0, 0.28, 0.96, -3.0), BICUBIC),  # rotation: 2-D taps
        ((1.01, 0, 0.3, 0, 1, 0), BICUBIC),  # a scale: offsets differ along a row
        ((1, 0.2, 0.3, 0, 1, 0), Image.Resampling.BILINEAR),
        ((1, 0.2, 0.3, 0, 1, 0), Image.Resampling.NEAREST),
    ],
)
def test_other_warps_and_filters_are_left_to_pil(matrix, resample):
    assert warp_clip(_frames(t=1), (20, 20), matrix, resample, GREY) is None


def _counting(monkeypatch) -> list[int]:
    """Count the warps warp_clip does itself (not handed back to PIL)."""
    done = [0]

    def spy(*args, **kwargs):
        out = warp_clip(*args, **kwargs)
        done[0] += out is not None
        return out

    monkeypatch.setattr("aptune.data.augment_ops.warp_clip", spy)
    return done


def test_augment_box_is_unchanged_by_the_fast_warp(monkeypatch):
    """The whole RandAugment box path with drawn ops gives the same bytes with and without
    warp_clip (PIL then warps every frame)."""
    done = _counting(monkeypatch)
    frames = _frames(t=3, h=72, w=96, seed=7)
    ra = ClipRandAugment("rand-m9-n3-mstd0.5-inc1", 32, "bicubic")
    boxes = [(0, 0, 96, 72), (10, 5, 50, 40), (40, 30, 56, 42)]
    fast = [
        ra.augment_box(frames, seed, box, flip=seed % 2 == 1) for seed in range(40) for box in boxes
    ]
    assert done[0] >= 10  # drawn shears and translations went through warp_clip
    monkeypatch.setattr("aptune.data.augment_ops.warp_clip", lambda *args, **kwargs: None)
    for k, (seed, box) in enumerate((s, b) for s in range(40) for b in boxes):
        assert np.array_equal(fast[k], ra.augment_box(frames, seed, box, flip=seed % 2 == 1))


def test_chains_of_one_axis_warps_and_point_ops_match_pil(monkeypatch):
    """Consecutive warps stay as one array between them; a point op in between goes back to
    PIL images: both orders equal the all-PIL path."""

    def op(name, *args):
        return Op(name, NAME_TO_OP[name], args, {"fillcolor": GREY, "resample": BICUBIC})

    chains = [
        [op("ShearX", 0.2113), op("TranslateYRel", -0.1317)],
        [op("TranslateXRel", 0.0871), op("Solarize", 120), op("ShearY", -0.1791)],
        [op("ShearY", 0.1234), op("Rotate", 11.3), op("TranslateXRel", -0.05)],
    ]
    frames = _frames(t=2, h=72, w=96, seed=3)
    ra = ClipRandAugment("rand-m9-n2-mstd0.5-inc1", 32)
    done = _counting(monkeypatch)
    for chain in chains:
        monkeypatch.setattr(ra, "draw", lambda seed, chain=chain: chain)
        fast = ra.augment_box(frames, 0, (8, 6, 70, 50))
        with monkeypatch.context() as m:
            m.setattr("aptune.data.augment_ops.warp_clip", lambda *args, **kwargs: None)
            slow = ra.augment_box(frames, 0, (8, 6, 70, 50))
        assert np.array_equal(fast, slow), chain
    assert done[0] == 6  # every shear and translation of the three chains


def test_train_transform_output_is_unchanged(monkeypatch):
    transform = TrainTransform(32, auto_augment="rand-m9-n4-mstd0.5-inc1", reprob=0.25)
    frames = _frames(t=4, h=60, w=80, seed=11)
    fast = [transform(frames, np.random.default_rng(s)) for s in range(12)]
    monkeypatch.setattr("aptune.data.augment_ops.warp_clip", lambda *args, **kwargs: None)
    for s in range(12):
        assert bool((fast[s] == transform(frames, np.random.default_rng(s))).all()), s


def test_contiguous_clip_mirrors_like_numpy():
    from aptune.data.augment_ops import contiguous_clip

    frames = _frames(t=2, h=20, w=30)
    view = frames[:, 3:17, 5:26]  # a crop: strided, as augment_box passes it
    assert np.array_equal(contiguous_clip(view, True), view[:, :, ::-1])
    assert contiguous_clip(view, True).flags.c_contiguous
    assert np.array_equal(contiguous_clip(view), view) and contiguous_clip(view).flags.c_contiguous
    frozen = view.copy()
    frozen.flags.writeable = False  # e.g. a memory-mapped cache entry
    assert np.array_equal(contiguous_clip(frozen, True), view[:, :, ::-1])


@pytest.mark.parametrize(
    "t, hw, size", [(1, (5, 7), (1, 1)), (2, (1, 9), (6, 3)), (1, (9, 1), (2, 8))]
)
def test_tiny_clips_and_boxes_match_pil(t, hw, size):
    """One frame, one-pixel-wide sources and one-pixel outputs: clamped taps, no empty arrays."""
    frames = np.random.default_rng(3).integers(0, 256, (t, *hw, 3)).astype(np.uint8)
    for matrix in [(1, 0.17, 0.3, 0, 1, 0), (1, 0, 1.0, -0.2, 1, 0.4), (1, 0, -0.25, 0, 1, 0)]:
        fast = warp_clip(frames, size, matrix, BICUBIC, GREY)
        assert fast is not None and np.array_equal(fast, _pil(frames, size, matrix)), matrix
