"""``--aug_device``: workers decode and plan, the main process augments the batch.

Both paths start from the same plans (same draws, same order); the device path differs only
by resampling in float (the worker path resizes uint8) and by its erasing noise's generator.
So the checks are: plans equal the worker path's draws; each step (crop + flip + resize,
each RandAugment op, erasing boxes) gives the worker path's output within interpolation
tolerance; and over many clips the summary statistics agree.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from aptune.data import DataConfig, DeviceAugment, RawBatch, build_dataset, collate_clips
from aptune.data.device_augment import RawClipItem, collate_raw
from aptune.data.transforms import IMAGENET_STD, ClipPlan, TrainTransform

LEVEL = 1 / (255 * min(IMAGENET_STD))  # one uint8 step after normalisation (0.0174)


def natural_frames(t: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth structure plus texture: bilinear differences show, saturation is rare."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    frames = np.empty((t, h, w, 3), dtype=np.uint8)
    for k in range(t):
        base = 128 + 60 * np.sin(xx / (7 + k) + yy / 11) + 30 * np.cos(yy / 5 - k)
        for c in range(3):
            frames[k, :, :, c] = np.clip(base + 20 * c + rng.normal(0, 8, (h, w)), 0, 255)
    return frames


def raw_batch(frames: list[np.ndarray], plans: list[list[ClipPlan]], size: int) -> RawBatch:
    items = [
        RawClipItem(torch.from_numpy(f), p, k, k, (3, f.shape[0], size, size))
        for k, (f, p) in enumerate(zip(frames, plans, strict=True))
    ]
    return collate_raw(items)


def worker_clips(tf: TrainTransform, frames, plans) -> torch.Tensor:
    return torch.stack([tf.apply(f, p) for f, ps in zip(frames, plans) for p in ps])


@pytest.mark.parametrize("aa", [None, "rand-m9-n2-mstd0.5-inc1"])
def test_plans_are_the_worker_paths_draws(aa):
    """A clip from `TrainTransform(frames, rng)` equals applying its plan: same draws."""
    tf = TrainTransform(32, auto_augment=aa, reprob=0.5, recount=2)
    frames = natural_frames(4, 40, 56)
    for seed in range(6):
        direct = tf(frames, np.random.default_rng(seed))
        plan = tf.plan(4, 40, 56, np.random.default_rng(seed), ops=True)
        assert torch.equal(direct, tf.apply(frames, plan))
        if aa:  # the shipped ops are the ones the seed draws
            assert [op.name for op in plan.ops] == [
                o.name for o in tf._rand_augment.draw(plan.seed)
            ]


@pytest.mark.parametrize("shape", [(4, 240, 320), (3, 29, 37), (2, 64, 48)])
def test_crop_flip_resize_equal_within_a_level(shape):
    """Downscaling, upscaling, portrait: every pixel within one uint8 level (the worker
    path resizes uint8 with fixed-point weights, the device path stays in float)."""
    t, h, w = shape
    tf = TrainTransform(32, flip=True)
    frames = [natural_frames(t, h, w, seed) for seed in range(3)]
    rng = np.random.default_rng(1)
    plans = [[tf.plan(t, h, w, rng) for _ in range(4)] for _ in frames]
    assert any(p.flip for ps in plans for p in ps) and not all(p.flip for ps in plans for p in ps)
    got = DeviceAugment(32)(raw_batch(frames, plans, 32))
    want = worker_clips(tf, frames, plans)
    assert got.shape == want.shape == (12, 3, t, 32, 32)
    assert (got - want).abs().max() <= LEVEL * 1.01
    diff = got - want  # rounding noise, not a shifted grid or a bias:
    assert diff.abs().mean() <= LEVEL * 0.35 and abs(diff.mean()) <= LEVEL * 0.05


def test_mixed_frame_sizes_keep_row_order():
    """Rows are grouped by frame size internally and must come back in batch order."""
    tf = TrainTransform(16)
    frames = [
        natural_frames(2, 30, 40, 0),
        natural_frames(2, 50, 20, 1),
        natural_frames(2, 30, 40, 2),
    ]
    rng = np.random.default_rng(0)
    plans = [[tf.plan(2, *f.shape[1:3], rng) for _ in range(2)] for f in frames]
    batch = raw_batch(frames, plans, 16)
    assert batch.source == [0, 0, 1, 1, 2, 2] and batch.labels.tolist() == [0, 0, 1, 1, 2, 2]
    got = DeviceAugment(16)(batch)
    assert (got - worker_clips(tf, frames, plans)).abs().max() <= LEVEL * 1.01


@pytest.mark.parametrize("count", [1, 3])
def test_erasing_boxes_match_exactly_with_const_fill(count):
    tf = TrainTransform(24, reprob=1.0, remode="const", recount=count)
    frames = [natural_frames(4, 36, 48, s) for s in range(2)]
    rng = np.random.default_rng(5)
    plans = [[tf.plan(4, 36, 48, rng) for _ in range(3)] for _ in frames]
    assert sum(len(p.erase) for ps in plans for p in ps) >= 24
    got = DeviceAugment(24, "const")(raw_batch(frames, plans, 24))
    want = worker_clips(tf, frames, plans)
    assert torch.equal(got == 0, want == 0)  # the same pixels erased, nothing else zeroed
    assert (got - want).abs().max() <= LEVEL * 1.01


def test_rand_augment_clips_match_and_so_do_their_statistics():
    """The reference's default RandAugment (4 ops, magnitude 7 +- 0.5) over many clips:
    every op reproduces PIL exactly, so each clip is within the resize's rounding (plus a
    level where the worker path's crop-box warp samples exactly on a pixel edge), and the
    per-channel statistics over the batch agree."""
    tf = TrainTransform(32, auto_augment="rand-m7-n4-mstd0.5-inc1")
    frames = [natural_frames(2, 48, 64, s) for s in range(8)]
    rng = np.random.default_rng(11)
    plans = [[tf.plan(2, 48, 64, rng, ops=True) for _ in range(6)] for _ in frames]
    drawn = {op.name for ps in plans for p in ps for op in p.ops}
    assert len(drawn) >= 12  # most of the 15 ops ran, several clips per op
    got = DeviceAugment(32)(raw_batch(frames, plans, 32))
    want = worker_clips(tf, frames, plans)
    diff = (got - want).abs()
    assert diff.max() <= LEVEL * 2.01 and diff.mean() <= LEVEL * 0.35
    for stat in (lambda x: x.mean(dim=(0, 2, 3, 4)), lambda x: x.std(dim=(0, 2, 3, 4))):
        assert torch.allclose(stat(got), stat(want), atol=LEVEL * 0.2)


def test_pixel_and_rand_fills_follow_their_distributions():
    frames = [natural_frames(8, 40, 40, s) for s in range(4)]
    for mode in ("pixel", "rand"):
        tf = TrainTransform(32, reprob=0.5, remode=mode, recount=2)
        rng = np.random.default_rng(2)
        plans = [[tf.plan(8, 40, 40, rng)] for _ in frames]
        batch = raw_batch(frames, plans, 32)
        device = DeviceAugment(32, mode)
        got = device(batch)
        unerased = [[dataclasses.replace(p, erase=())] for [p] in plans]
        clean = device(raw_batch(frames, unerased, 32))
        erased = (got != clean).any(dim=1)  # (B, T, S, S)
        mask = torch.zeros_like(erased)
        for row, [plan] in enumerate(plans):
            for t, top, left, h, w in plan.erase:
                mask[row, t, top : top + h, left : left + w] = True
        assert torch.equal(erased, mask)
        values = got.permute(0, 2, 3, 4, 1)[mask]  # (pixels, 3)
        assert abs(values.mean()) < 0.15 and 0.8 < values.std() < 1.2
        if mode == "rand":  # one colour per box: few distinct values
            assert len(torch.unique(values[:, 0])) <= sum(len(p.erase) for [p] in plans)
        again = device(batch)
        assert torch.equal(got, again)  # the batch's plans decide the noise: reproducible


def _dataset(square_videos, defer: bool, **kw):
    cfg = DataConfig(data_set="UCF101", data_path=str(square_videos), nb_classes=4,
                     num_frames=4, sampling_rate=2, input_size=32, short_side_size=32,
                     defer_augment=defer, **kw)  # fmt: skip
    return build_dataset("train", cfg)


@pytest.fixture(scope="module")
def square_videos(tmp_path_factory):
    from aptune.data.synthetic import write_video

    root = tmp_path_factory.mktemp("dev_aug")
    lines = []
    for k in range(4):
        path = root / f"v{k}.mp4"
        write_video(path, natural_frames(12, 48 + 8 * (k % 2), 64, k), 25)
        lines.append(f"{path} {k}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    return root


def test_deferred_dataset_gives_the_worker_paths_clips(square_videos):
    """Same item seeds -> the same clips from both datasets (within one uint8 level)."""
    opts = dict(num_sample=2, reprob=0.5, remode="const")
    worker, deferred = _dataset(square_videos, False, **opts), _dataset(square_videos, True, **opts)
    items = []
    for i in range(4):
        torch.manual_seed(i)
        items.append(worker[i])
    torch.manual_seed(0)
    raw = deferred[0]
    assert isinstance(raw, RawClipItem) and raw.frames.dtype == torch.uint8 and len(raw.plans) == 2
    raws = []
    for i in range(4):
        torch.manual_seed(i)
        raws.append(deferred[i])
    batch = collate_clips(raws)
    assert isinstance(batch, RawBatch) and len(batch) == 8
    want = collate_clips(items)
    assert torch.equal(batch.labels, want.labels) and torch.equal(
        batch.video_index, want.video_index
    )
    got = DeviceAugment(32, "const")(batch)
    assert (got - want.clips).abs().max() <= LEVEL * 1.01


def test_skipped_videos_are_reported_in_a_raw_batch(square_videos, tmp_path):
    from aptune.data import SkippedItem

    ds = _dataset(square_videos, True)
    torch.manual_seed(0)
    batch = collate_clips([ds[0], SkippedItem("bad.avi", "bad.avi: unreadable", 9, (3, 4, 32, 32))])
    assert len(batch) == 1 and batch.skipped == [("bad.avi", "bad.avi: unreadable")]
    assert DeviceAugment(32)(batch).shape == (1, 3, 4, 32, 32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_result():
    """The same batch on the GPU and on the CPU (no erasing: its noise generator differs)."""
    tf = TrainTransform(32, auto_augment="rand-m9-n2-mstd0.5-inc1")
    frames = [natural_frames(4, 48, 64, s) for s in range(4)]
    rng = np.random.default_rng(3)
    plans = [[tf.plan(4, 48, 64, rng, ops=True) for _ in range(2)] for _ in frames]
    batch = raw_batch(frames, plans, 32)
    on_gpu = DeviceAugment(32)(batch.pin_memory().to("cuda", non_blocking=True))
    assert on_gpu.is_cuda
    assert torch.allclose(on_gpu.cpu(), DeviceAugment(32)(batch), atol=1e-4)


def test_deferred_items_from_the_decode_cache_equal_decoded_ones(square_videos, tmp_path):
    """--decode_cache with the device path: the same frames and plans, in a tensor the
    worker may hand over (writeable, not a view of the cache's memory map)."""
    plain = _dataset(square_videos, True, num_sample=2)
    cached = _dataset(square_videos, True, num_sample=2, decode_cache=str(tmp_path / "cache"))
    for _pass in range(2):  # the first read fills the cache, the second maps it
        for i in range(4):
            torch.manual_seed(i)
            want = plain[i]
            torch.manual_seed(i)
            got = cached[i]
            assert torch.equal(got.frames, want.frames) and got.plans == want.plans
            assert got.frames.numpy().flags.writeable
