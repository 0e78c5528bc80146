"""Test views equal the reference's (VideoMAE kinetics.py / ssv2.py as APT uses them).

The reference side is written out here independently of aptune: one sequential PyAV decode
of the file, the reference's index rules, OpenCV INTER_LINEAR resize written by hand in
numpy (and `cv2` itself when importable), its crop offsets, ImageNet normalisation. The
aptune side goes through `build_dataset("test")`, the path `aptune eval` and `predict` use.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from aptune.data import DataConfig, build_dataset, open_video, sampling
from aptune.data.lists import write_video_list

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
T, RATE, SIZE = 16, 4, 224


def _frames(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """Textured frames that change every frame (a wrong frame or a blurrier resize shows)."""
    rng = np.random.default_rng(seed)
    xx, yy = np.arange(width)[None, :], np.arange(height)[:, None]
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        wave = 60 * np.sin((xx + 7 * i) / 5.0) + 60 * np.cos((yy - 3 * i) / 9.0)
        frame = 0.5 * base[:height, :width] + wave[..., None] + 60 + (i * 37 % 90)
        out[i] = np.clip(frame, 0, 255)
    return out


def _write(path: Path, frames: np.ndarray, codec: str, options: dict) -> Path:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=25)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = 12
        stream.options = {"preset": "ultrafast", **options} if codec == "libx264" else options
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


B_FRAMES = {"qscale": "2", "bf": "2"}  # mpeg4 with 2 B-frames per P, as Xvid writes


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("reference_views")
    # 320x240 mpeg4 AVI with B-frames (as UCF101 / HMDB51), 340x256 mp4, a 280-frame portrait
    # mp4 already at 224 px (no resize; crops along the height)
    return {
        "avi": _write(root / "a.avi", _frames(100, 240, 320, 0), "mpeg4", B_FRAMES),
        "mp4": _write(root / "b.mp4", _frames(90, 256, 340, 1), "libx264", {"crf": "12"}),
        "long": _write(root / "c.mp4", _frames(280, 300, 224, 2), "libx264", {"crf": "12"}),
    }


# ---- the reference, written out independently ----


def decode_all(path: Path) -> np.ndarray:
    """Every frame of one sequential decode, in the order a player shows them."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def ref_dense_views(n: int, num_segment: int) -> list[list[int]]:
    all_index = list(range(0, n, RATE))
    while len(all_index) < T:
        all_index.append(all_index[-1])
    step = max(1.0 * (len(all_index) - T) / (num_segment - 1), 0)
    return [all_index[int(k * step) : int(k * step) + T] for k in range(num_segment)]


def ref_segment_views(n: int) -> list[list[int]]:
    tick = n / float(T)
    all_index = [int(tick / 2.0 + tick * x) for x in range(T)] + [int(tick * x) for x in range(T)]
    while len(all_index) < T * 2:
        all_index.append(all_index[-1])
    all_index = sorted(all_index)
    return [all_index[0::2], all_index[1::2]]


def linear_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """OpenCV INTER_LINEAR by hand: source x = (dst + 0.5) * in / out - 0.5, clamped at the
    borders, bilinear weights, no antialiasing, rounded to uint8."""

    def axis(n_out: int, n_in: int):
        f = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        i0 = np.floor(f).astype(np.int64)
        frac = f - i0
        frac[i0 < 0], i0[i0 < 0] = 0.0, 0
        frac[i0 >= n_in - 1], i0[i0 >= n_in - 1] = 0.0, n_in - 1
        return i0, np.minimum(i0 + 1, n_in - 1), frac

    y0, y1, fy = axis(out_h, img.shape[-3])
    x0, x1, fx = axis(out_w, img.shape[-2])
    im = img.astype(np.float32)  # (..., H, W, 3): frames of a clip at once
    fx, fy = fx[:, None], fy[:, None, None]
    cols = im[..., x0, :] * (1 - fx) + im[..., x1, :] * fx  # (..., H, w, 3)
    out = cols[..., y0, :, :] * (1 - fy) + cols[..., y1, :, :] * fy
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def cv2_resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(f, (out_w, out_h), interpolation=cv2.INTER_LINEAR) for f in img])


def ref_views(frames: np.ndarray, indices: list[int], num_crop: int, resize) -> list[np.ndarray]:
    """The reference's test crops of one temporal view -> normalised (3, T, S, S) each."""
    clip = frames[indices]
    h, w = clip.shape[1:3]
    if not ((w <= h and w == SIZE) or (h <= w and h == SIZE)):
        oh, ow = (int(SIZE * h / w), SIZE) if w < h else (SIZE, int(SIZE * w / h))
        clip = resize(clip, oh, ow)
    spatial_step = 1.0 * (max(clip.shape[1], clip.shape[2]) - SIZE) / (num_crop - 1)
    out = []
    for j in range(num_crop):
        s = int(j * spatial_step)
        crop = clip[:, s : s + SIZE] if clip.shape[1] >= clip.shape[2] else clip[:, :, s : s + SIZE]
        norm = (crop / 255.0 - MEAN) / STD  # (T, S, S, 3)
        out.append(norm.transpose(3, 0, 1, 2))
    return out


# ---- comparison ----


def aptune_views(path: Path, data_set: str, segments: int, crops: int, tmp: Path) -> list:
    lists = tmp / f"lists_{path.stem}_{data_set}"
    write_video_list(lists / "test.csv", [(str(path), 0)])
    cfg = DataConfig(data_set=data_set, data_path=str(lists), nb_classes=2, num_frames=T,
                     sampling_rate=RATE, input_size=SIZE, short_side_size=SIZE,
                     test_num_segment=segments, test_num_crop=crops, backend="pyav")  # fmt: skip
    ds = build_dataset("test", cfg)
    return [ds[i].clips[0].numpy() for i in range(len(ds))]


def _check_views(path, data_set, segments, crops, resize, tmp):
    frames = decode_all(path)
    n = len(frames)
    with open_video(str(path), "pyav") as reader:
        assert reader.num_frames == n
    ref_index = ref_dense_views(n, segments) if data_set != "SSV2" else ref_segment_views(n)
    mode = sampling.sampling_mode(data_set)
    assert sampling.all_test_views(mode, n, T, RATE, segments) == ref_index
    ours = aptune_views(path, data_set, segments, crops, tmp)
    ref = [v for idx in ref_index for v in ref_views(frames, idx, crops, resize)]
    assert len(ours) == len(ref) == segments * crops
    diffs = [float(np.abs(a - b).mean()) for a, b in zip(ours, ref)]
    assert max(diffs) <= 0.01, diffs
    return ref_index, diffs


@pytest.mark.slow
@pytest.mark.parametrize("name", ["avi", "mp4", "long"])
def test_dense_views_equal_reference(videos, name, tmp_path):
    segments = 3 if name == "mp4" else 5  # (fewer decodes; 5 x 3 is covered by the others)
    index, _ = _check_views(videos[name], "UCF101", segments, 3, linear_resize, tmp_path)
    assert all(i % RATE == 0 for view in index for i in view)
    if name == "long":  # the example: middle clips start at frames 52 and 160
        assert [v[0] for v in index] == [0, 52, 108, 160, 216]


@pytest.mark.slow
def test_segment_views_equal_reference(videos, tmp_path):
    _check_views(videos["mp4"], "SSV2", 2, 3, linear_resize, tmp_path)


@pytest.mark.slow
def test_dense_views_equal_reference_with_cv2(videos, tmp_path):
    pytest.importorskip("cv2")  # not a dependency: only where it happens to be installed
    _check_views(videos["avi"], "UCF101", 5, 3, cv2_resize, tmp_path)


def test_hand_written_linear_matches_cv2():
    pytest.importorskip("cv2")
    img = np.random.default_rng(3).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for oh, ow in [(224, 298), (224, 224), (300, 400), (120, 160)]:
        ours = linear_resize(img, oh, ow).astype(int)
        theirs = cv2_resize(img[None], oh, ow)[0].astype(int)
        assert np.abs(ours - theirs).max() <= 1  # OpenCV's fixed-point weights round


def test_resize_is_inter_linear_not_antialiased():
    from aptune.data.transforms import resize_short_side

    img = np.random.default_rng(4).integers(0, 256, (2, 240, 320, 3), dtype=np.uint8)
    out = resize_short_side(img, SIZE).permute(0, 2, 3, 1).numpy().astype(int)
    assert out.shape == (2, 224, 298, 3)  # long side floored: int(224 * 320 / 240) = 298
    ref = linear_resize(img, 224, 298).astype(int)
    assert np.abs(out - ref).max() <= 1
    # an antialiased resize of noise is much smoother: the difference would be large
    smooth = torch.nn.functional.interpolate(
        torch.from_numpy(img).permute(0, 3, 1, 2).float(), size=(224, 298), mode="bilinear",
        antialias=True,
    )  # fmt: skip
    assert np.abs(smooth.permute(0, 2, 3, 1).numpy() - ref).mean() > 2  # ours: ~0.1


@pytest.mark.parametrize("n", range(1, 90))
def test_dense_and_segment_index_rules_for_every_length(n):
    for segments in (2, 3, 5, 10):
        assert sampling.dense_test_views(n, T, RATE, segments) == ref_dense_views(n, segments)
    assert sampling.segment_test_views(n, T, 2) == ref_segment_views(n)
