"""Process-group setup that understands every launcher the reference's users have.

``python -m torch.distributed.launch`` passes ``--local-rank=N`` (PyTorch >= 2.0) or
``--local_rank N`` (older) and sets RANK/WORLD_SIZE; ``torchrun`` sets LOCAL_RANK. One
process without any of these runs undistributed. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / DataParallel / ``torch.compile`` wrappers, so parameter
    names carry no ``module.`` or ``_orig_mod.`` prefix (checkpoints, EMA, param groups)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested in ("auto", ""):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{local_rank}"
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested}: CUDA is not available here; use --device cpu")
    return device


def init_distributed(device: str = "auto", local_rank_flag: int = -1) -> DistInfo:
    """Join the process group when launched by a distributed launcher, else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", local_rank_flag if local_rank_flag >= 0 else 0))
    rank = int(os.environ.get("RANK", local))
    dev = choose_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://", world_size=world, rank=rank)
    return DistInfo(rank, world, local, dev, backend)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a list of one object when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    if info.backend == "nccl":
        t = t.to(info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world_size


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
