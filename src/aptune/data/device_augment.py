"""Training augmentation as batched tensor ops on the training device (``--aug_device``).

With a GPU, a frozen-backbone method is paced by the CPU side: DataLoader workers that
decode *and* augment cannot keep up. Here workers only decode and draw each clip's
:class:`ClipPlan` (the same draws, in the same order, as the worker path); the main
process moves the uint8 frames to the device and applies the plans to the whole batch:

1. RandAugment: per layer, the clips whose op at that layer is the same are processed
   together (``tensor_ops.apply_op``, per-clip magnitudes);
2. random resized crop + flip + bilinear resize: one ``grid_sample`` over the batch whose
   grid reproduces ``F.interpolate(align_corners=False)`` on each clip's box;
3. ImageNet normalisation; random erasing from the planned boxes via one mask.

Clips are grouped by frame size (a batch of one dataset usually has one or a few sizes).
Bilinear in float instead of on uint8 and the erasing noise's generator are the only
differences from the worker path; tests bound them per op and over many clips.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .tensor_ops import apply_op, to_device
from .transforms import IMAGENET_MEAN, IMAGENET_STD, ClipPlan

_FLOAT_BUDGET = 256 * 2**20  # bytes of float frames resampled at once (bounds memory)


@dataclass
class RawClipItem:
    """A decoded training video and the plans of its ``num_sample`` clips."""

    frames: torch.Tensor  # uint8 (T, H, W, 3)
    plans: list[ClipPlan]
    label: int
    video_index: int
    clip_shape: tuple[int, int, int, int]  # (3, T, S, S) of one augmented clip


@dataclass
class RawBatch:
    """Decoded frames and plans of a batch; :class:`DeviceAugment` turns it into clips."""

    frames: list[torch.Tensor]  # uint8 (T, H, W, 3), one per video
    plans: list[ClipPlan]  # one per row
    source: list[int]  # row -> index into `frames`
    labels: torch.Tensor  # (B,) int64, one per row
    video_index: torch.Tensor
    clip_shape: tuple[int, int, int, int]  # (3, T, S, S) of one augmented clip
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.plans)

    def pin_memory(self) -> RawBatch:
        """Called by DataLoader(pin_memory=True): the host-to-device copy can overlap."""
        return self._map(lambda t: t.pin_memory())

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RawBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def _map(self, fn) -> RawBatch:
        return RawBatch(
            [fn(f) for f in self.frames], list(self.plans), list(self.source), fn(self.labels),
            fn(self.video_index), self.clip_shape, list(self.skipped),
        )  # fmt: skip


def collate_raw(items: list) -> RawBatch:
    """Rows = plans (``num_sample`` per video); skipped items are reported, never replaced."""
    good = [it for it in items if isinstance(it, RawClipItem)]
    skipped = [(it.path, it.reason) for it in items if not isinstance(it, RawClipItem)]
    plans, source, labels, videos = [], [], [], []
    for k, item in enumerate(good):
        for plan in item.plans:
            plans.append(plan)
            source.append(k)
            labels.append(item.label)
            videos.append(item.video_index)
    return RawBatch(
        [it.frames for it in good], plans, source, torch.tensor(labels, dtype=torch.int64),
        torch.tensor(videos, dtype=torch.int64), good[0].clip_shape, skipped,
    )  # fmt: skip


class DeviceAugment:
    """Applies the plans of a :class:`RawBatch` on the device its tensors are on (move it
    there first: ``batch.to(device)``); returns (B, 3, T, S, S) normalised float32 clips
    (what the worker path's ``Batch.clips`` holds)."""

    def __init__(self, input_size: int, remode: str = "pixel", seed: int = 0) -> None:
        self.input_size, self.remode, self.seed = input_size, remode, seed

    def __call__(self, batch: RawBatch) -> torch.Tensor:
        device = batch.labels.device
        _, frames_per_clip, size, _ = batch.clip_shape
        out = torch.empty((len(batch), 3, frames_per_clip, size, size), device=device)
        if len(batch) == 0:
            return out
        groups: dict[tuple[int, ...], list[int]] = {}
        for row, src in enumerate(batch.source):
            groups.setdefault(tuple(batch.frames[src].shape), []).append(row)
        for rows in groups.values():
            out[_on(device, rows)] = self._group(batch, rows, device)
        return self._erase(out, batch.plans)

    def _group(self, batch: RawBatch, rows: list[int], device: torch.device) -> torch.Tensor:
        """Rows whose videos share one frame size -> (n, 3, T, S, S)."""
        plans = [batch.plans[r] for r in rows]
        videos = sorted({batch.source[r] for r in rows})
        stacked = torch.stack([batch.frames[v] for v in videos])
        pick = _on(device, [videos.index(batch.source[r]) for r in rows])
        clips = stacked.index_select(0, pick).permute(0, 1, 4, 2, 3)  # (n, T, 3, H, W) uint8
        clips = self._rand_augment(clips.contiguous(), plans)
        return self._crop_resize(clips, plans)

    @staticmethod
    def _rand_augment(clips: torch.Tensor, plans: list[ClipPlan]) -> torch.Tensor:
        """Layer by layer: each distinct op of a layer runs once on all clips drawing it."""
        for layer in range(max((len(p.ops) for p in plans), default=0)):
            by_name: dict[str, list[int]] = {}
            for i, plan in enumerate(plans):
                if layer < len(plan.ops):
                    by_name.setdefault(plan.ops[layer].name, []).append(i)
            for name, idx in by_name.items():
                ops = [plans[i].ops[layer] for i in idx]
                index = _on(clips.device, idx)
                clips[index] = apply_op(
                    name, clips[index], [op.args for op in ops], [op.resample for op in ops],
                    ops[0].fill,
                )  # fmt: skip
        return clips

    def _crop_resize(self, clips: torch.Tensor, plans: list[ClipPlan]) -> torch.Tensor:
        """Crop each clip's box, mirror if planned, bilinear to S x S, normalise."""
        n, t, _, height, width = clips.shape
        size = self.input_size
        grid = _crop_grid(plans, height, width, size, clips.device)  # (n, S, S, 2)
        per_chunk = max(1, _FLOAT_BUDGET // (t * 3 * height * width * 4))
        parts = []
        for lo in range(0, n, per_chunk):
            x = clips[lo : lo + per_chunk].reshape(-1, t * 3, height, width).float()
            y = F.grid_sample(x, grid[lo : lo + per_chunk], mode="bilinear",
                              padding_mode="border", align_corners=False)  # fmt: skip
            parts.append(y.reshape(-1, t, 3, size, size))
        y = torch.cat(parts).permute(0, 2, 1, 3, 4)  # (n, 3, T, S, S)
        mean = _on(y.device, IMAGENET_MEAN, torch.float32).view(1, 3, 1, 1, 1) * 255
        std = _on(y.device, IMAGENET_STD, torch.float32).view(1, 3, 1, 1, 1) * 255
        return (y - mean) / std

    def _erase(self, clips: torch.Tensor, plans: list[ClipPlan]) -> torch.Tensor:
        """Every planned box at once: a map of the last box covering each pixel, then the
        fill (``pixel``: per-pixel normal noise, ``rand``: a colour per box, ``const``: 0)."""
        boxes = [(row, *box) for row, plan in enumerate(plans) for box in plan.erase]
        if not boxes:
            return clips
        n, _, t, size, _ = clips.shape
        dev = clips.device
        b = _on(dev, boxes)  # (K, 6): row, frame, top, left, h, w
        coords = torch.arange(size, device=dev)
        inside_y = (coords >= b[:, 2:3]) & (coords < (b[:, 2] + b[:, 4])[:, None])  # (K, S)
        inside_x = (coords >= b[:, 3:4]) & (coords < (b[:, 3] + b[:, 5])[:, None])
        ids = torch.arange(1, len(boxes) + 1, device=dev).view(-1, 1, 1)
        covered = (inside_y[:, :, None] & inside_x[:, None, :]) * ids  # (K, S, S)
        last = torch.zeros((n * t, size * size), dtype=covered.dtype, device=dev)
        frame = (b[:, 0] * t + b[:, 1])[:, None].expand(-1, size * size)
        last.scatter_reduce_(0, frame, covered.flatten(1), "amax")  # last box id per pixel
        last = last.view(n, 1, t, size, size)
        gen = torch.Generator(device=dev).manual_seed(self._fill_seed(plans))
        if self.remode == "pixel":
            fill = torch.randn(clips.shape, generator=gen, device=dev)
        elif self.remode == "rand":
            colours = torch.randn((len(boxes) + 1, 3), generator=gen, device=dev)
            fill = colours[last.squeeze(1)].permute(0, 4, 1, 2, 3)  # (n, 3, T, S, S)
        else:
            fill = torch.zeros((), device=dev)
        return torch.where(last > 0, fill, clips)

    def _fill_seed(self, plans: list[ClipPlan]) -> int:
        """The batch's planned fill seeds (drawn per item) decide its noise: reproducible."""
        seeds = np.array([p.fill_seed for p in plans], dtype=np.uint64)
        return int((seeds * np.uint64(2_654_435_761)).sum() + np.uint64(self.seed)) % 2**63


def _on(device: torch.device, values, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """A small host-built tensor on ``device`` without a stream sync (a blocking copy would
    wait for the previous step's queued GPU work before this batch's kernels launch)."""
    return to_device(torch.tensor(values, dtype=dtype), torch.device(device))


def _crop_grid(
    plans: list[ClipPlan], height: int, width: int, size: int, device: torch.device
) -> torch.Tensor:
    """grid_sample coordinates that read each clip's box like F.interpolate(bilinear,
    align_corners=False) of the cropped box: source = (dst + 0.5) * scale - 0.5, clamped
    to the box, mirrored for flipped clips."""
    box = _on(device, [p.box for p in plans], torch.float64)
    flip = _on(device, [p.flip for p in plans], torch.bool)
    top, left, h, w = box.unbind(1)
    dst = torch.arange(size, dtype=torch.float64, device=device)
    ys = ((dst + 0.5) * (h / size)[:, None] - 0.5).clamp(min=0)
    ys = torch.minimum(ys, (h - 1)[:, None]) + top[:, None]  # (n, S) frame rows
    xs = ((dst + 0.5) * (w / size)[:, None] - 0.5).clamp(min=0)
    xs = torch.minimum(xs, (w - 1)[:, None])
    xs = torch.where(flip[:, None], xs.flip(1), xs) + left[:, None]
    gx = (xs + 0.5) * 2 / width - 1  # align_corners=False: -1 is the left edge of pixel 0
    gy = (ys + 0.5) * 2 / height - 1
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    return grid.float()
