"""RNG states of a process as plain types, for checkpoints: torch (CPU, CUDA), numpy,
Python. Split from ``checkpoint.py`` for size; ``checkpoint`` re-exports both functions.

RNG state is the writing process's; in a multi-process run each rank's state is stored
separately by the caller (mid-epoch checkpoints gather them) or reseeded.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng() -> dict[str, Any]:
    """Torch (CPU, CUDA), numpy and Python RNG states as tensors / lists / ints / str.

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
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; CUDA states only if CUDA is present here too."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = np.asarray(n["keys"], dtype=np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
