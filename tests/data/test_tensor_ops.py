"""The batched tensor RandAugment ops equal timm's PIL ops applied frame by frame.

Every op is compared with timm's own op function (`timm.data.auto_augment`, PIL underneath)
on every frame of every clip, with three clips of different magnitudes (and resamplings) in
one call, so the per-clip vectorisation is checked too. All ops come out bit-exact on these
frames, so the tests demand equality: any drift from PIL's arithmetic shows at once.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import auto_augment as aa

from aptune.data import tensor_ops
from aptune.data.tensor_ops import SUPPORTED, apply_op

FILL = (128, 128, 128)
LARGE, SMALL = (240, 320), (29, 37)  # (H, W): a decoded frame, and a small odd one
NEAREST, BILINEAR, BICUBIC = 0, 2, 3


@functools.cache
def _frames(height: int, width: int, seed: int = 0, n: int = 3, t: int = 2) -> np.ndarray:
    """(N, T, H, W, 3) uint8: smooth gradients plus noise, different per frame, and the
    corner cases of the histogram ops: a frame of 4 levels with one constant channel, and a
    low-contrast frame (values 100..140)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((n, t, height, width, 3), np.uint8)
    for i in range(n):
        for j in range(t):
            angle = rng.uniform(0, 2 * np.pi)
            ramp = np.cos(angle) * xs / width + np.sin(angle) * ys / height
            base = 128 + 110 * ramp[..., None] * rng.uniform(0.5, 1.2, 3)
            frames[i, j] = np.clip(base + rng.normal(0, 20, base.shape), 0, 255)
    frames[1, 1] = frames[1, 1] // 64 * 64  # few levels (equalize's steps)
    frames[1, 1, ..., 2] = 77  # a constant channel (autocontrast / equalize: identity)
    frames[2, 0] = 100 + frames[2, 0] // 7  # low contrast (autocontrast stretches)
    frames.flags.writeable = False  # cached: shared by the tests
    return frames


def _reference(name: str, frames: np.ndarray, args, resample) -> np.ndarray:
    """timm's op on each frame with PIL, as RandAugment calls it (posterize to 0 bits:
    black, the project's rule)."""
    fn = aa.NAME_TO_OP[name]
    out = np.empty_like(frames)
    for i, clip in enumerate(frames):
        for j, frame in enumerate(clip):
            if name.startswith("Posterize") and args[i][0] <= 0:
                out[i, j] = 0
                continue
            image = fn(Image.fromarray(frame), *args[i], fillcolor=FILL, resample=resample[i])
            out[i, j] = np.asarray(image)
    return out


def _clips(frames: np.ndarray, device: str = "cpu") -> torch.Tensor:
    """(N, T, H, W, 3) array -> (N, T, 3, H, W) tensor (a copy: the frames are cached)."""
    return torch.from_numpy(frames.copy()).permute(0, 1, 4, 2, 3).contiguous().to(device)


def _apply(name: str, frames: np.ndarray, args, resample, device: str = "cpu") -> np.ndarray:
    clips = _clips(frames, device)
    if device == "cuda":  # any host sync inside apply_op raises
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        out = apply_op(name, clips, args, resample, FILL)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    assert out.dtype == torch.uint8 and out.shape == clips.shape and out.device == clips.device
    return out.permute(0, 1, 3, 4, 2).cpu().numpy()


def _assert_equal(got: np.ndarray, expected: np.ndarray, context) -> None:
    diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() == 0, (context, int(diff.max()), float((diff > 0).mean()))


def _check(name, args, resample=None, size=SMALL, seed=0, device="cpu") -> None:
    resample = resample or [BICUBIC] * len(args)
    frames = _frames(*size, seed=seed, n=len(args))
    got = _apply(name, frames, args, resample, device)
    _assert_equal(got, _reference(name, frames, args, resample), (name, args, resample, size))


ENHANCE = [[(0.1,), (0.37,), (1.9,)], [(1.0,), (1.53,), (0.0,)]]
COLOUR_ARGS = {  # op -> magnitude sets, one tuple per clip (what timm's level functions give)
    "AutoContrast": [[(), (), ()]],
    "Equalize": [[(), (), ()]],
    "Invert": [[(), (), ()]],
    "Posterize": [[(0,), (2,), (4,)], [(1,), (3,), (8,)]],
    "PosterizeIncreasing": [[(4,), (1,), (0,)]],
    "PosterizeOriginal": [[(8,), (5,), (6,)], [(4,), (7,), (4,)]],
    "Solarize": [[(0,), (128,), (256,)], [(77,), (200,), (1,)]],
    "SolarizeIncreasing": [[(256,), (25,), (179,)]],
    "SolarizeAdd": [[(0,), (77,), (110,)], [(11,), (128,), (33,)]],
    "Color": ENHANCE,
    "ColorIncreasing": [[(0.1,), (1.9,), (0.55,)]],
    "Contrast": ENHANCE,
    "ContrastIncreasing": [[(0.1,), (1.9,), (0.55,)]],
    "Brightness": ENHANCE,
    "BrightnessIncreasing": [[(0.1,), (1.9,), (0.55,)]],
    "Sharpness": ENHANCE,
    "SharpnessIncreasing": [[(0.1,), (1.9,), (0.55,)]],
}
GEOMETRIC_ARGS = {  # both signs; round values too (samples exactly on pixel centres / edges)
    "Rotate": [[(21.3,), (-16.401,), (6.6,)], [(30.0,), (-30.0,), (0.0,)]],
    "ShearX": [[(0.2113,), (-0.1627,), (0.3,)], [(0.0,), (-0.3,), (0.05,)]],
    "ShearY": [[(-0.17,), (0.1309,), (-0.3,)], [(0.3,), (0.0,), (-0.0527,)]],
    "TranslateX": [[(-37.3,), (28.721,), (100.0,)], [(0.0,), (-250.0,), (2.5,)]],
    "TranslateY": [[(61.7,), (-47.509,), (-100.0,)], [(10.0,), (-0.5,), (250.0,)]],
    "TranslateXRel": [[(0.2873,), (-0.45,), (0.089,)], [(0.45,), (0.0,), (-0.2213,)]],
    "TranslateYRel": [[(-0.3917,), (0.3016,), (0.45,)], [(-0.45,), (0.1214,), (0.0,)]],
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: as fast on these small tensors, and no stalls on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


RESAMPLINGS = [[NEAREST] * 3, [BILINEAR] * 3, [BICUBIC] * 3, [BICUBIC, NEAREST, BILINEAR]]


def test_every_supported_op_is_tested():
    assert set(COLOUR_ARGS) | set(GEOMETRIC_ARGS) == SUPPORTED


@pytest.mark.parametrize("size", [LARGE, SMALL], ids=["320x240", "37x29"])
@pytest.mark.parametrize("name", sorted(COLOUR_ARGS))
def test_colour_op_equals_pil(name, size):
    """LUT, histogram and blend ops: bit-exact (every magnitude set on the small frame)."""
    for args in COLOUR_ARGS[name] if size == SMALL else COLOUR_ARGS[name][:1]:
        _check(name, args, size=size)


@pytest.mark.parametrize("resample", RESAMPLINGS, ids=["nearest", "bilinear", "bicubic", "mix"])
@pytest.mark.parametrize("name", sorted(GEOMETRIC_ARGS))
def test_geometric_op_equals_pil_small(name, resample):
    """Affine warps on a small odd frame, all resamplings: bit-exact."""
    for args in GEOMETRIC_ARGS[name]:
        _check(name, args, resample, seed=1)


@pytest.mark.parametrize("name", sorted(GEOMETRIC_ARGS))
def test_geometric_op_equals_pil_large(name):
    """A whole decoded frame, one clip per resampling kind (mixed kinds in one call)."""
    _check(name, GEOMETRIC_ARGS[name][0], [NEAREST, BILINEAR, BICUBIC], size=LARGE, seed=2)


@pytest.mark.parametrize("size", [(29, 37), (31, 31)], ids=["non-square", "square"])
def test_rotate_by_multiples_of_90(size):
    """PIL copies / transposes (square) or warps (non-square) there; equal either way."""
    for args in ([(90.0,), (180.0,), (270.0,)], [(-90.0,), (360.0,), (450.0,)]):
        for resample in ([NEAREST, BILINEAR, BICUBIC], [BICUBIC, NEAREST, BILINEAR]):
            _check("Rotate", args, resample, size=size, seed=3)


def test_levels_drawn_by_timm():
    """Arguments exactly as timm's level functions return them, for every op."""
    rng = random.Random(0)
    hparams = {"translate_const": 100}
    state = random.getstate()
    try:
        random.seed(0)  # timm's _randomly_negate draws from the global generator
        for k, name in enumerate(sorted(SUPPORTED)):
            level_fn = aa.LEVEL_TO_ARG[name]
            args = [tuple(level_fn(rng.uniform(0, 10), hparams)) if level_fn else ()
                    for _ in range(3)]  # fmt: skip
            resample = [rng.choice([NEAREST, BILINEAR, BICUBIC]) for _ in range(3)]
            _check(name, args, resample, seed=10 + k)
    finally:
        random.setstate(state)


def test_chunked_warp(monkeypatch):
    """A small float budget splits the warp into chunks of output pixels: same result."""
    monkeypatch.setattr(tensor_ops, "_FLOAT_BUDGET", 1000)
    for resample in ([BICUBIC] * 3, [BILINEAR] * 3):
        _check("Rotate", GEOMETRIC_ARGS["Rotate"][0], resample, seed=4)


def test_input_untouched_and_empty_batch():
    frames = _frames(*SMALL)
    clips = _clips(frames)
    before = clips.clone()
    for name in ("Rotate", "Equalize", "Sharpness", "Invert"):
        args = [(5.0,)] * 3 if name in ("Rotate", "Sharpness") else [()] * 3
        apply_op(name, clips, args, [BICUBIC] * 3)
        assert torch.equal(clips, before)
    empty = clips[:0]
    assert apply_op("Rotate", empty, [], []).shape == empty.shape


def test_posterize_zero_bits_is_black():
    clips = _clips(_frames(*SMALL))
    out = apply_op("Posterize", clips, [(0,), (-1,), (8,)], [BICUBIC] * 3)
    assert not out[:2].any() and torch.equal(out[2], clips[2])


def test_unknown_op_raises():
    clips = torch.zeros((1, 2, 3, 8, 8), dtype=torch.uint8)
    with pytest.raises(ValueError, match="GaussianBlur"):
        apply_op("GaussianBlur", clips, [(1.0,)], [BICUBIC])
    with pytest.raises(ValueError, match="resample"):
        apply_op("Rotate", clips, [(10.0,)], [1])


def _any_args(name: str) -> list[tuple]:
    return (GEOMETRIC_ARGS.get(name) or COLOUR_ARGS[name])[0]


def test_no_device_reads_or_host_tensors():
    """On the "meta" device (no data): any read of a device value back to the host, or a
    host tensor mixed into device arithmetic, raises, as it would cost a sync on a GPU."""
    clips = torch.zeros((3, 2, 3, 29, 37), dtype=torch.uint8, device="meta")
    for name in sorted(SUPPORTED):
        out = apply_op(name, clips, _any_args(name), [NEAREST, BILINEAR, BICUBIC])
        assert out.device.type == "meta" and out.shape == clips.shape
        out = apply_op(name, clips, _any_args(name), [BICUBIC] * 3)
        assert out.dtype == torch.uint8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_pil():
    """Every op on the GPU, against PIL (and so against the CPU path), with no host sync."""
    for name in sorted(SUPPORTED):
        table = GEOMETRIC_ARGS if name in GEOMETRIC_ARGS else COLOUR_ARGS
        for args in table[name]:
            _check(name, args, [BICUBIC, NEAREST, BILINEAR], size=LARGE, seed=5, device="cuda")
