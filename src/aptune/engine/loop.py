"""One training epoch and one evaluation pass, shared by every tuning method.

The loop follows the reference recipe: the learning rate and weight decay are set per
optimiser step from precomputed schedules, gradients are accumulated over
``update_freq`` micro-batches (without DDP all-reduce on the intermediate ones), clipped,
and an EMA of the weights is updated after each step. Videos the data pipeline could not
read arrive as ``Batch.skipped`` and are counted, never replaced. ``after_step`` is asked
after every optimiser step whether to stop (preemption) and may write a mid-epoch
checkpoint; ``start_step`` + ``carry`` continue an epoch from such a checkpoint.
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

from aptune.config import ConfigError
from aptune.data import RawBatch
from aptune.engine.distributed import DistInfo, all_reduce_mean, unwrap
from aptune.engine.metrics import ViewRecords, view_probs
from aptune.engine.optim import apply_schedules, clip_gradients


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf: training cannot continue meaningfully."""


@dataclass
class Precision:
    """Autocast settings; ``name`` is what the log says runs."""

    name: str = "fp32"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def resolve_precision(requested: str, device: torch.device) -> Precision:
    if requested == "auto":
        requested = "fp16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA device; on CPU use --precision bf16")
    return Precision(requested, device.type)


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

    def carry(self) -> dict:
        """What a mid-epoch checkpoint keeps so the resumed epoch reports the same numbers."""
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
    the epoch there (``stats.stopped``)."""
    model, opt = ts.model, ts.optimizer
    model.train()
    stats = carry if carry is not None else EpochStats()
    limit = ts.steps_per_epoch if ts.max_steps is None else min(ts.steps_per_epoch, ts.max_steps)
    total_micro = limit * ts.update_freq
    bar = tqdm(total=limit, initial=start_step, desc=f"epoch {epoch}",
               disable=not (progress and info.is_main), leave=False)  # fmt: skip
    loss_sum, loss_n, start = stats.loss_sum, stats.loss_n, time.perf_counter()
    clips_before = stats.clips
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
                loss_sum, loss_n = loss_sum + loss, loss_n + 1
                stats.clips += len(batch)
        if is_update:
            stats.grad_norm = _optimizer_step(ts)
            stats.steps += 1
            bar.update(1)
            elapsed = time.perf_counter() - start
            lr = max(g["lr"] for g in opt.param_groups)
            bar.set_postfix(loss=f"{loss_sum / max(loss_n, 1):.4f}", lr=f"{lr:.2e}",
                            clips_s=f"{stats.clips / max(elapsed, 1e-9):.2f}")  # fmt: skip
            if on_step is not None:
                on_step(global_step, {"loss": loss_sum / max(loss_n, 1), "lr": lr})
            stats.loss_sum, stats.loss_n = loss_sum, loss_n
            if after_step is not None and after_step(step + 1, stats):
                stats.stopped = True
                break
    bar.close()
    elapsed = time.perf_counter() - start
    stats.loss_sum, stats.loss_n = loss_sum, loss_n
    stats.loss = all_reduce_mean(loss_sum / max(loss_n, 1), info)
    stats.lr = max(g["lr"] for g in opt.param_groups)
    stats.clips_per_s = (stats.clips - clips_before) * info.world_size / max(elapsed, 1e-9)
    return stats


def _forward_backward(ts: TrainStep, batch, info: DistInfo, sync: bool) -> float | None:
    """Loss of the micro-batch (None for an all-skipped batch, which contributes zero)."""
    if isinstance(batch, RawBatch):  # workers decoded only: augment here, on the device
        clips = ts.augment(batch.to(info.device, non_blocking=True))
    else:
        clips = batch.clips.to(info.device, non_blocking=True)
    labels = batch.labels.to(info.device, non_blocking=True)
    if len(batch) == 0:
        (ts.model(clips).sum() * 0.0).backward()
        return None
    if ts.mixup is not None:
        clips, targets = ts.mixup(clips, labels)
    no_sync = getattr(ts.model, "no_sync", None)
    ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
    with ctx:
        with ts.precision.autocast():
            logits = ts.model(clips)
        if ts.mixup is not None:
            loss = ts.soft_criterion(logits.float(), targets)
        else:
            loss = ts.criterion(logits.float(), labels)
        value = float(loss.item())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"loss is {value}; lower --lr, use --clip_grad, or check the data/checkpoint"
            )
        loss = loss / ts.update_freq
        if ts.scaler is not None:
            ts.scaler.scale(loss).backward()
        else:
            loss.backward()
    return value


def _optimizer_step(ts: TrainStep) -> float | None:
    params = [p for g in ts.optimizer.param_groups for p in g["params"]]
    if ts.scaler is not None:
        ts.scaler.unscale_(ts.optimizer)
    norm = clip_gradients(params, ts.clip_grad)
    if ts.scaler is not None:
        ts.scaler.step(ts.optimizer)
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
) -> ViewRecords:
    """Softmax of every view this process sees, keyed by (video, view)."""
    model.eval()
    records = ViewRecords()
    total = len(loader) if hasattr(loader, "__len__") else None
    for batch in tqdm(loader, total=total, desc=desc, disable=not (progress and info.is_main),
                      leave=False):  # fmt: skip
        clips = batch.clips.to(info.device, non_blocking=True)
        with precision.autocast():
            logits = model(clips)
        probs = view_probs(logits).cpu().numpy()
        records.add(batch.video_index.tolist(), batch.view_index.tolist(),
                    batch.labels.tolist(), probs)  # fmt: skip
    return records
