"""RNG states of a process as plain types, for checkpoints: torch (CPU and this process's
GPU), numpy, Python. Split from ``checkpoint.py`` for size; ``checkpoint`` re-exports both
functions.

RNG state is the writing process's; in a multi-process run each rank's state is stored
separately by the caller (mid-epoch checkpoints gather them) or reseeded. Only the rank's
own GPU is read or written: ``torch.cuda.get_rng_state_all`` would open a CUDA context on
every GPU of the node from every rank (memory on each, and an error where the GPUs are in
exclusive-process mode).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def own_cuda_device(device: torch.device | None = None) -> int | None:
    """The GPU index whose generator belongs to this process: ``device``'s when it is a
    CUDA device, else the current GPU if this process already uses CUDA, else None (a CPU
    run never touches CUDA, even on a GPU machine)."""
    if device is not None:
        if device.type != "cuda":
            return None
        return device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.current_device()
    return None


def capture_rng(device: torch.device | None = None) -> dict[str, Any]:
    """Torch (CPU, the process's GPU), numpy and Python RNG states as tensors / lists /
    ints / str.

    Plain types only, so ``torch.load(weights_only=True)`` reads them back; numpy's and
    Python's tuples become dicts / lists.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": list(py_state), "gauss": py_gauss},
    }
    gpu = own_cuda_device(device)
    if gpu is not None:
        state["cuda_device"] = {"index": gpu, "state": torch.cuda.get_rng_state(gpu)}
    return state


def restore_rng(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Inverse of :func:`capture_rng`, into this process's GPU only (when it has one).

    Older checkpoints hold every GPU's state (``cuda``, a list): the entry of this
    process's GPU is used.
    """
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    gpu = own_cuda_device(device)
    if gpu is None:
        return
    if "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"]["state"].cpu(), gpu)
    elif "cuda" in state and gpu < len(state["cuda"]):
        torch.cuda.set_rng_state(state["cuda"][gpu].cpu(), gpu)
