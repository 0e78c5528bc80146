"""Process-group setup that understands every launcher the reference's users have.

``python -m torch.distributed.launch`` passes ``--local-rank=N`` (PyTorch >= 2.0) or
``--local_rank N`` (older) and sets RANK/WORLD_SIZE; ``torchrun`` sets LOCAL_RANK. One
process without any of these runs undistributed. NCCL on CUDA, gloo on CPU.

Restarts under torchrun (``--max-restarts``): the elastic agent keeps one TCPStore for
the whole job (static rendezvous: ``if not self._store``; c10d: the shared store) and
tells the workers to use it (``TORCHELASTIC_USE_AGENT_STORE``) without a per-attempt key
prefix. Gloo's full-mesh connect reads each peer's address from that store, so after a
restart a rank can read the *dead* peer's address of the previous attempt and retry it
until the 30-minute default timeout ("Connection refused" to the old port; figures in
docs/reliability.md). Here rank 0 hosts a fresh store on a free port for every
attempt and publishes its address in the agent store; a rank that reads a stale address
finds nothing listening there and re-reads it. Every wait is bounded by
``--dist_timeout`` and ends in one line naming the rank and what it waited for.

Besides the backend's group (NCCL on GPUs) every run has a gloo group on the CPU
(``DistInfo.cpu_group``) for the things that must not touch the GPU or its watchdog: the
per-step stop vote (:class:`StopVote`, a non-blocking all-reduce read one step later, so
the step never waits for it) and the waits for rank 0's long work such as checkpoint
writes (:func:`wait_for_main`, bounded by ``max(--dist_timeout, MAIN_WORK_TIMEOUT)``: an
NCCL barrier there would be aborted by the watchdog at ``--dist_timeout``).
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

from aptune.config import ConfigError

STORE_KEY = "aptune/attempt_store"
#: seconds the other ranks wait while rank 0 writes a checkpoint or reports (at least
#: --dist_timeout): a ViT-g checkpoint with AdamW state is ~12 GB, ten minutes at 20 MB/s
MAIN_WORK_TIMEOUT = 3600.0
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
    cpu_group: Any = None  # gloo group for the stop vote and waits for rank 0 (see above)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _own_gpu(local_rank: int) -> int:
    """The GPU index of the process with ``local_rank`` on its node: GPU ``LOCAL_RANK``, or
    GPU 0 when the launcher made one GPU visible per process (Slurm ``--gpus-per-task``)."""
    count = torch.cuda.device_count()
    if count == 1:
        return 0
    if local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but this node shows {count} GPUs: start at most {count} "
            "processes per node (--nproc-per-node)"
        )
    return local_rank


def choose_device(requested: str, local_rank: int, world: int = 1) -> torch.device:
    """``--device`` for this process; under a launcher (``world`` > 1) each rank gets its own
    GPU: ``cuda`` means GPU ``LOCAL_RANK``, and ``cuda:N`` is accepted only when N is that
    GPU (a shared index would put every rank on one GPU)."""
    if requested in ("auto", ""):
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {requested}: CUDA is not available here; use --device cpu")
    own = _own_gpu(local_rank)
    if device.index is None or world <= 1:
        return device if device.index is not None else torch.device("cuda", own)
    if device.index != own:
        raise ConfigError(
            f"--device {requested} under a launcher with {world} processes: the rank with "
            f"LOCAL_RANK {local_rank} uses GPU {own}; pass --device cuda (each rank takes "
            "its own GPU)"
        )
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
    dev = choose_device(device, local, world)
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
    wait = timedelta(seconds=max(timeout, MAIN_WORK_TIMEOUT))
    info.cpu_group = bounded(info, "the CPU group to form",
                             lambda: dist.new_group(backend="gloo", timeout=wait))  # fmt: skip
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


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over the ranks (on the CPU group: no GPU tensor involved)."""
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    bounded(info, "the other ranks' epoch loss (all_reduce)",
            lambda: dist.all_reduce(t, op=dist.ReduceOp.SUM, group=info.cpu_group))  # fmt: skip
    return float(t.numpy()[0]) / info.world_size


class StopVote:
    """Every rank learns, at the same optimiser step, whether a stop signal reached any of
    them, without the step waiting for the vote or for the GPU.

    :meth:`poll` at step k reads the MAX all-reduce started at step k-1 (on the CPU gloo
    group, so no GPU tensor is read) and starts the next one with this rank's flag: all
    ranks read the same value at the same step, and a signal is acted on one step after it
    arrived. ``final=True`` (the end of an epoch) also votes on the flag as it is now and
    waits, leaving nothing in flight. One process: the local flag, at once.
    """

    def __init__(self, info: DistInfo) -> None:
        self.info = info
        self.pending: tuple[Any, torch.Tensor] | None = None

    def poll(self, local: int, what: str, final: bool = False) -> int:
        if not self.info.enabled:
            return local
        agreed = self._collect(what)
        if agreed == 0:  # a decided stop starts no new vote: every rank stops here
            self._start(local, what)
            if final:
                agreed = self._collect(what)
        return agreed

    def _start(self, local: int, what: str) -> None:
        flag = torch.tensor([local], dtype=torch.int64)
        work = bounded(self.info, what, lambda: dist.all_reduce(
            flag, op=dist.ReduceOp.MAX, group=self.info.cpu_group, async_op=True))  # fmt: skip
        self.pending = (work, flag)

    def _collect(self, what: str) -> int:
        if self.pending is None:
            return 0
        work, flag = self.pending
        self.pending = None
        wait = timedelta(seconds=self.info.timeout)
        bounded(self.info, what, lambda: work.wait(wait))
        return int(flag.numpy()[0])  # a CPU tensor: no device to wait for


def wait_for_main(info: DistInfo, what: str) -> None:
    """All ranks meet here after rank 0's long work alone (a checkpoint, reports): a gloo
    barrier on the CPU group, allowed ``max(--dist_timeout, MAIN_WORK_TIMEOUT)`` seconds,
    where an NCCL barrier would be aborted by its watchdog at ``--dist_timeout``."""
    if not info.enabled:
        return
    group = info.cpu_group
    bounded(info, f"rank 0 at {what}", lambda: dist.barrier(group=group))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_STORE.clear()
