"""Process-group setup that understands every launcher the reference's users have.

``python -m torch.distributed.launch`` passes ``--local-rank=N`` (PyTorch >= 2.0) or
``--local_rank N`` (older) and sets RANK/WORLD_SIZE; ``torchrun`` sets LOCAL_RANK. One
process without any of these runs undistributed. NCCL on CUDA, gloo on CPU.

Restarts under torchrun (``--max-restarts``): the elastic agent keeps one TCPStore for
the whole job (static rendezvous: ``if not self._store``; c10d: the shared store) and
tells the workers to use it (``TORCHELASTIC_USE_AGENT_STORE``) without a per-attempt key
prefix. Gloo's full-mesh connect reads each peer's address from that store, so after a
restart a rank can read the *dead* peer's address of the previous attempt and retry it
until the 30-minute default timeout (measured: 6 of 8 restarts failed with "Connection
refused" to the old port). Here rank 0 hosts a fresh store on a free port for every
attempt and publishes its address in the agent store; a rank that reads a stale address
finds nothing listening there and re-reads it. Every wait is bounded by
``--dist_timeout`` and ends in one line naming the rank and what it waited for.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

STORE_KEY = "aptune/attempt_store"
_T = TypeVar("_T")


class DistTimeoutError(ValueError):
    """A rank waited longer than --dist_timeout; a ValueError so the CLI prints one line."""


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
    timeout: float = 300.0  # --dist_timeout, seconds

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


def init_distributed(
    device: str = "auto", local_rank_flag: int = -1, timeout: float = 300.0
) -> DistInfo:
    """Join the process group when launched by a distributed launcher, else run alone.

    ``timeout`` (seconds, ``--dist_timeout``) bounds the setup and every collective.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", local_rank_flag if local_rank_flag >= 0 else 0))
    rank = int(os.environ.get("RANK", local))
    dev = choose_device(device, local)
    if world <= 1:
        return DistInfo(0, 1, 0, dev, None, timeout)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    info = DistInfo(rank, world, local, dev, backend, timeout)
    if not dist.is_initialized():
        span = timedelta(seconds=timeout)
        what = "the process group to form (all ranks to start and connect)"
        try:
            if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
                store = _attempt_store(rank, world, timeout)
                dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                        timeout=span)  # fmt: skip
            else:
                dist.init_process_group(backend, init_method="env://", rank=rank,
                                        world_size=world, timeout=span)  # fmt: skip
        except DistTimeoutError:
            raise
        except Exception as e:  # DistStoreError, gloo connect errors: one line, not 30 min
            raise _timeout_error(info, what, e) from None
    return info


_OWN_STORE: list[Any] = []  # keeps rank 0's per-attempt store server alive


def _attempt_store(rank: int, world: int, timeout: float) -> dist.Store:
    """A store that exists only for this attempt (see the module docstring for why).

    Rank 0 serves it on a free port and writes ``host:port:nonce`` into the agent's store;
    the other ranks connect, check the nonce, and re-read the key while it is stale.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    deadline = time.monotonic() + timeout
    agent = dist.TCPStore(host, port, world, False, timedelta(seconds=timeout))
    if rank == 0:
        own = dist.TCPStore(host, 0, world, True, timedelta(seconds=timeout),
                            wait_for_workers=False)  # fmt: skip
        nonce = f"{socket.gethostname()}-{os.getpid()}-{time.time_ns()}"
        own.set("nonce", nonce)
        agent.set(STORE_KEY, f"{host}:{own.port}:{nonce}")
        _OWN_STORE[:] = [own]
        return own
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise DistTimeoutError(
                f"rank {rank}: waited {timeout:g} s for rank 0 to publish this attempt's "
                "store; rank 0 did not start or died (see its log), or raise --dist_timeout"
            )
        agent.set_timeout(timedelta(seconds=left))
        h, p, nonce = agent.get(STORE_KEY).decode().rsplit(":", 2)
        try:
            # probe first: TCPStore would log a C++ stack trace for every refused retry
            socket.create_connection((h, int(p)), timeout=min(3.0, left)).close()
            own = dist.TCPStore(h, int(p), world, False, timedelta(seconds=min(3.0, left)))
            own.set_timeout(timedelta(seconds=min(3.0, left)))
            if own.get("nonce").decode() == nonce:
                own.set_timeout(timedelta(seconds=timeout))
                return own
        except Exception:  # a stale address of the previous attempt: nobody listens there
            pass
        time.sleep(0.2)


def _timeout_error(info: DistInfo, what: str, e: BaseException) -> DistTimeoutError:
    text = str(e).strip().splitlines()
    first = text[0][:200] if text else type(e).__name__
    return DistTimeoutError(
        f"rank {info.rank}/{info.world_size}: waited for {what} and gave up after at most "
        f"--dist_timeout {info.timeout:g} s; another rank died, hangs or stopped early "
        f"(see its log) ({first})"
    )


def bounded(info: DistInfo, what: str, fn: Callable[[], _T]) -> _T:
    """Run a collective; a timeout or a dead peer becomes one line naming rank and wait."""
    try:
        return fn()
    except RuntimeError as e:  # DistBackendError, gloo "Connection closed by peer" ...
        raise _timeout_error(info, what, e) from None


def barrier(info: DistInfo, what: str = "a barrier") -> None:
    if info.enabled:
        bounded(info, f"the other ranks at {what}", dist.barrier)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (a list of one object when not distributed)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    bounded(info, "the other ranks' results (all_gather)", lambda: dist.all_gather_object(out, obj))
    return out


def _reduce(t: torch.Tensor, info: DistInfo, op: Any, what: str) -> torch.Tensor:
    if info.backend == "nccl":
        t = t.to(info.device)
    bounded(info, what, lambda: dist.all_reduce(t, op=op))
    return t


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = _reduce(torch.tensor([value], dtype=torch.float64), info, dist.ReduceOp.SUM,
                "the other ranks' epoch loss (all_reduce)")  # fmt: skip
    return float(t.item()) / info.world_size


def max_over_ranks(value: int, info: DistInfo, what: str) -> int:
    """The largest ``value`` of all ranks, on every rank (e.g. a stop request's signal)."""
    if not info.enabled:
        return value
    t = _reduce(torch.tensor([value], dtype=torch.int64), info, dist.ReduceOp.MAX, what)
    return int(t.item())


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_STORE.clear()
