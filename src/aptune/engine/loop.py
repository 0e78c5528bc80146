"""One training epoch and one evaluation pass, shared by every tuning method.

The loop follows the reference recipe: the learning rate and weight decay are set per
optimiser step from precomputed schedules, gradients are accumulated over
``update_freq`` micro-batches (without DDP all-reduce on the intermediate ones), clipped,
and an EMA of the weights is updated after each step. Videos the data pipeline could not
read arrive as ``Batch.skipped`` and are counted, never replaced. ``after_step`` is asked
after every optimiser step whether to stop (preemption) and may write a mid-epoch
checkpoint; ``start_step`` + ``carry`` continue an epoch from such a checkpoint.

A step never reads a value back from the device: reading a CUDA tensor waits for every
kernel queued before it, so the CPU could not run ahead (launching the next kernels,
augmenting the next batch on the device) while the GPU computes. The micro-batch losses
and the gradient norm stay on the device (:class:`DeviceSums`) and are read every
``log_every`` optimiser steps, when a checkpoint needs them and at the end of the epoch;
a NaN/inf loss is noticed at the first such read.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from aptune.data import RawBatch
from aptune.engine.distributed import DistInfo, all_reduce_mean, unwrap
from aptune.engine.metrics import ViewRecords, view_probs
from aptune.engine.optim import apply_schedules, clip_gradients
from aptune.engine.precision import Precision, resolve_precision
from aptune.engine.segment_merge import TokenMerge, forward_views

#: optimiser steps between two reads of the loss and gradient norm (``--log_every``): a
#: read costs at most the overlap of one step, so 1/100 of a step or less
DEFAULT_LOG_EVERY = 100


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training cannot continue meaningfully."""


class DeviceSums:
    """The epoch's loss sum and the last gradient norm, kept on the device between reads.

    The sum is float64 and adds the fp32 losses one by one in order, so it equals the sum
    of their Python floats exactly: ``log.txt`` reports the same numbers as a loop that read
    every loss. ``count`` (non-empty micro-batches) is known on the host without a read.
    """

    def __init__(self, device: torch.device, loss_sum: float, count: int) -> None:
        self.total = torch.tensor(loss_sum, dtype=torch.float64, device=device)
        self.count = count
        self.norm: torch.Tensor | None = None
        self.read_at = count  # ``count`` at the last read

    def add(self, loss: torch.Tensor) -> None:
        self.total += loss.detach().to(torch.float64)
        self.count += 1

    def read(self, where: str) -> tuple[float, int, float | None]:
        """(loss sum, micro-batches, last gradient norm) as host numbers: one wait for the
        device. A NaN/inf since the last read stops training, naming ``where``."""
        total = float(self.total)
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"loss is {total} {where} (micro-batches {self.read_at + 1}-{self.count} of "
                "the epoch); lower --lr, use --clip_grad, or check the data/checkpoint"
            )
        self.read_at = self.count
        return total, self.count, None if self.norm is None else float(self.norm)


@dataclass
class EpochStats:
    loss: float = 0.0
    lr: float = 0.0
    clips_per_s: float = 0.0
    steps: int = 0
    clips: int = 0
    grad_norm: float | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    loss_sum: float = 0.0  # over this epoch's micro-batches so far (kept across a resume)
    loss_n: int = 0
    stopped: bool = False  # after_step asked to stop mid-epoch
    sums: DeviceSums | None = field(default=None, repr=False)  # the unread device values

    def settle(self, where: str = "") -> None:
        """Bring ``loss_sum``, ``loss_n`` and ``grad_norm`` up to date (a device read)."""
        if self.sums is not None:
            self.loss_sum, self.loss_n, norm = self.sums.read(where)
            self.grad_norm = norm if norm is not None else self.grad_norm

    def carry(self) -> dict:
        """What a mid-epoch checkpoint keeps so the resumed epoch reports the same numbers."""
        self.settle("before a checkpoint")
        return {"loss_sum": self.loss_sum, "loss_n": self.loss_n, "clips": self.clips,
                "steps": self.steps, "skipped": [list(s) for s in self.skipped],
                "grad_norm": self.grad_norm}  # fmt: skip

    @classmethod
    def from_carry(cls, d: dict | None) -> EpochStats:
        d = d or {}
        return cls(steps=int(d.get("steps", 0)), clips=int(d.get("clips", 0)),
                   grad_norm=d.get("grad_norm"), loss_sum=float(d.get("loss_sum", 0.0)),
                   loss_n=int(d.get("loss_n", 0)),
                   skipped=[tuple(s) for s in d.get("skipped", [])])  # fmt: skip

    def as_dict(self) -> dict:
        return {
            "train_loss": self.loss,
            "lr": self.lr,
            "clips_per_s": round(self.clips_per_s, 3),
            "steps": self.steps,
            "skipped_videos": len(self.skipped),
            **({"grad_norm": self.grad_norm} if self.grad_norm is not None else {}),
        }


@dataclass
class TrainStep:
    """Everything a step needs besides the batch; built once per run."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_values: np.ndarray
    wd_values: np.ndarray
    steps_per_epoch: int
    update_freq: int = 1
    clip_grad: float | None = None
    precision: Precision = field(default_factory=Precision)
    scaler: torch.amp.GradScaler | None = None
    ema: object | None = None
    mixup: Callable | None = None
    criterion: Callable = nn.functional.cross_entropy
    soft_criterion: Callable | None = None
    max_steps: int | None = None
    augment: Callable | None = None  # --aug_device: RawBatch -> clips on the device
    log_every: int = DEFAULT_LOG_EVERY  # optimiser steps between reads of loss and norm


def train_one_epoch(
    ts: TrainStep,
    loader: Iterable,
    epoch: int,
    info: DistInfo,
    progress: bool = True,
    on_step: Callable[[int, dict], None] | None = None,
    start_step: int = 0,
    carry: EpochStats | None = None,
    after_step: Callable[[int, EpochStats], bool] | None = None,
) -> EpochStats:
    """One epoch from optimiser step ``start_step`` (the loader must already skip the
    batches before it). ``after_step(steps_done_in_epoch, stats)`` returning True stops
    the epoch there (``stats.stopped``). ``on_step(global_step, values)`` gets the running
    loss, lr and gradient norm at each log point (every ``ts.log_every`` steps)."""
    model, opt = ts.model, ts.optimizer
    model.train()
    stats = carry if carry is not None else EpochStats()
    stats.sums = DeviceSums(info.device, stats.loss_sum, stats.loss_n)
    limit = ts.steps_per_epoch if ts.max_steps is None else min(ts.steps_per_epoch, ts.max_steps)
    total_micro = limit * ts.update_freq
    bar = tqdm(total=limit, initial=start_step, desc=f"epoch {epoch}",
               disable=not (progress and info.is_main), leave=False)  # fmt: skip
    start, clips_before = time.perf_counter(), stats.clips
    opt.zero_grad(set_to_none=True)
    first = start_step * ts.update_freq
    for micro, batch in enumerate(loader if first < total_micro else (), start=first):
        if micro >= total_micro:
            break
        stats.skipped += batch.skipped
        step, is_update = divmod(micro, ts.update_freq)[0], (micro + 1) % ts.update_freq == 0
        global_step = epoch * ts.steps_per_epoch + step
        if micro % ts.update_freq == 0:
            apply_schedules(opt, global_step, ts.lr_values, ts.wd_values)
        if len(batch) > 0 or info.enabled:  # an empty batch still joins DDP's all-reduce
            loss = _forward_backward(ts, batch, info, sync=is_update)
            if loss is not None:
                stats.sums.add(loss)
                stats.clips += len(batch)
        if not is_update:
            continue
        stats.sums.norm = _optimizer_step(ts)
        stats.steps += 1
        bar.update(1)
        if (global_step + 1) % ts.log_every == 0:
            _log_point(stats, opt, global_step, epoch, bar, on_step, start, clips_before)
        if after_step is not None and after_step(step + 1, stats):
            stats.stopped = True
            break
    bar.close()
    stats.settle(f"in epoch {epoch}")  # waits for the GPU: the time below includes its work
    stats.sums = None
    elapsed = time.perf_counter() - start
    stats.loss = all_reduce_mean(stats.loss_sum / max(stats.loss_n, 1), info)
    stats.lr = max(g["lr"] for g in opt.param_groups)
    stats.clips_per_s = (stats.clips - clips_before) * info.world_size / max(elapsed, 1e-9)
    return stats


def _log_point(stats: EpochStats, opt, global_step: int, epoch: int, bar, on_step,
               start: float, clips_before: int) -> None:  # fmt: skip
    """Read the device sums (the one wait for the GPU in ``log_every`` steps) and show them."""
    stats.settle(f"at step {global_step + 1} (epoch {epoch})")
    loss = stats.loss_sum / max(stats.loss_n, 1)
    lr = max(g["lr"] for g in opt.param_groups)
    rate = (stats.clips - clips_before) / max(time.perf_counter() - start, 1e-9)
    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", clips_s=f"{rate:.2f}")
    if on_step is not None:
        values = {"loss": loss, "lr": lr}
        if stats.grad_norm is not None:
            values["grad_norm"] = stats.grad_norm
        on_step(global_step, values)


def _device_batch(ts: TrainStep, batch, info: DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips, labels) on the training device; pinned batches copy without a wait."""
    if isinstance(batch, RawBatch):  # workers decoded only: augment here, on the device
        clips = ts.augment(batch.to(info.device, non_blocking=True))
    else:
        clips = batch.clips.to(info.device, non_blocking=True)
    return clips, batch.labels.to(info.device, non_blocking=True)


def _forward_backward(ts: TrainStep, batch, info: DistInfo, sync: bool) -> torch.Tensor | None:
    """The micro-batch's loss, left on the device (None for an all-skipped batch, which
    contributes zero gradients but runs the same forward, autocast and DDP ``no_sync``
    as any other micro-batch: its ranks' all-reduce must happen on the same micro-step)."""
    clips, labels = _device_batch(ts, batch, info)
    empty = len(batch) == 0
    if ts.mixup is not None and not empty:
        clips, targets = ts.mixup(clips, labels)
    no_sync = getattr(ts.model, "no_sync", None)
    ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
    with ctx:
        with ts.precision.autocast():
            logits = ts.model(clips)
        if empty:
            loss = logits.float().sum() * 0.0
        elif ts.mixup is not None:
            loss = ts.soft_criterion(logits.float(), targets)
        else:
            loss = ts.criterion(logits.float(), labels)
        scaled = loss / ts.update_freq
        (ts.scaler.scale(scaled) if ts.scaler is not None else scaled).backward()
    return None if empty else loss.detach()


def _optimizer_step(ts: TrainStep) -> torch.Tensor | None:
    """Unscale, clip, step, EMA; returns the gradient norm as a device tensor."""
    params = [p for g in ts.optimizer.param_groups for p in g["params"]]
    if ts.scaler is not None:
        ts.scaler.unscale_(ts.optimizer)
    norm = clip_gradients(params, ts.clip_grad)
    if ts.scaler is not None:
        ts.scaler.step(ts.optimizer)  # skips on inf/NaN on the device with a fused optimiser
        ts.scaler.update()
    else:
        ts.optimizer.step()
    ts.optimizer.zero_grad(set_to_none=True)
    if ts.ema is not None:
        ts.ema.update(unwrap(ts.model))
    return norm


@torch.no_grad()
def predict_views(
    model: nn.Module,
    loader: Iterable,
    info: DistInfo,
    precision: Precision,
    progress: bool = True,
    desc: str = "eval",
    merge: TokenMerge | None = None,
) -> ViewRecords:
    """Softmax of every view this process sees, keyed by (video, view); with ``merge``
    (whole videos per item) of every crop, its segments joined as tokens."""
    model.eval()
    records = ViewRecords()
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc=desc, disable=not (progress and info.is_main),
                      leave=False):  # fmt: skip
        with precision.autocast():
            logits, videos, views, labels = forward_views(model, batch, info.device, merge)
        probs = view_probs(logits).cpu().numpy()
        records.add(videos.tolist(), views.tolist(), labels.tolist(), probs)
    return records


__all__ = [
    "DEFAULT_LOG_EVERY",
    "DeviceSums",
    "EpochStats",
    "NonFiniteLossError",
    "Precision",
    "TrainStep",
    "predict_views",
    "resolve_precision",
    "train_one_epoch",
]
