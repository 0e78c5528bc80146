"""Memory figures of ``aptune profile``: the process's RSS peaks, and the exact peak of the
tensors one train step creates.

RSS is what the machine pays, allocator caches included, so it needs a fresh process per
configuration. The tensor peak does not: it counts the bytes of every storage an op
creates while it is alive, so two configurations (with and without gradient
checkpointing) compare exactly in one process, whatever the allocator keeps.
"""

from __future__ import annotations

import resource
import sys
import weakref
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

MB = 2.0**20


# -- process RSS (Linux VmHWM; ru_maxrss elsewhere) -----------------------------------------
def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB -> MB
    except OSError:
        return None
    return None


def reset_peak() -> None:
    """Peak RSS := current RSS (Linux); a no-op elsewhere, where peaks count from start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes vs kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def rss_mb() -> float:
    rss = _status_mb("VmRSS")
    return rss if rss is not None else peak_mb()


# -- tensors created by a step --------------------------------------------------------------
class TensorPeak(TorchDispatchMode):
    """Live and peak bytes of the tensor storages that ops create inside this mode.

    A storage is counted when an op first returns it and released by a weakref finalizer
    when it dies. Storages that existed before (weights, the input batch) and outputs that
    alias an input (views, in-place and ``out=`` ops) add nothing. Buffers a C++ kernel
    allocates and frees inside itself are not seen: this is the memory autograd and the
    model hold, not a kernel's scratch space.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._counted: dict[int, weakref.finalize] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        inputs = {id(_storage(t)) for t in tree_leaves((args, kwargs)) if _is_real(t)}
        for t in tree_leaves(out):
            if _is_real(t) and id(_storage(t)) not in inputs:
                self._count(_storage(t))
        return out

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)  # torch keeps one Python object per live storage
        if key in self._counted:
            return
        nbytes = storage.nbytes()
        done = weakref.finalize(storage, self._release, key, nbytes)
        done.atexit = False
        self._counted[key] = done
        self.live += nbytes
        self.peak = max(self.peak, self.live)

    def _release(self, key: int, nbytes: int) -> None:
        self._counted.pop(key, None)
        self.live -= nbytes


def _is_real(t: object) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type != "meta"


def _storage(t: torch.Tensor) -> torch.UntypedStorage:
    return t.untyped_storage()


def step_memory(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any
) -> dict[str, float]:
    """MB of tensors one forward + backward creates (no optimiser step), from no gradients.

    ``kept_mb``: alive when forward ends, what it keeps for backward (activations);
    ``peak_mb``: the most alive at once over forward and backward (activations,
    recomputation, gradients in flight, the parameters' gradients).
    """
    model.zero_grad(set_to_none=True)
    with TensorPeak() as tracker:
        with autocast:
            loss = F.cross_entropy(model(x), y)
        kept = tracker.live
        loss.backward()
        del loss
    model.zero_grad(set_to_none=True)
    return {"kept_mb": kept / MB, "peak_mb": tracker.peak / MB}
