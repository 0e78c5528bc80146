"""Model weights as safetensors: trainable-only (PEFT) or full, written atomically.

Split from ``checkpoint.py`` so ``eval``/``predict`` and the checkpoint folders share one
reader and writer. Loading checks every tensor first and copies nothing when anything
does not fit; errors are one line naming the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from aptune.engine.distributed import unwrap
from aptune.models.checkpoint_io import CheckpointError

FORMAT = "aptune"
MODEL_FILE = "model.safetensors"


# -- low-level atomic writing ---------------------------------------------------------------
def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (renames), to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _json_default(obj: Any) -> Any:
    """Paths, numpy scalars and sets in a run config become JSON; anything else its str."""
    if isinstance(obj, np.generic):
        return obj.item()
    return sorted(obj) if isinstance(obj, (set, frozenset)) else str(obj)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)
    _fsync(path)


# -- weights --------------------------------------------------------------------------------
def model_tensors(model: nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """What goes into ``model.safetensors``: trainable parameters, or the full state dict."""
    model = unwrap(model)
    if trainable_only:
        items = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    else:
        items = list(model.state_dict().items())
    return {n: t.detach().cpu().contiguous() for n, t in items}


def _safetensors_write(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    meta = {
        k: v if isinstance(v, str) else json.dumps(v, default=_json_default)
        for k, v in meta.items()
    }
    save_file(tensors, str(path), metadata=meta)
    _fsync(path)


def _weights_metadata(trainable_only: bool, extra: dict | None = None) -> dict:
    return {**(extra or {}), "format": FORMAT, "trainable_only": trainable_only}


def save_model_weights(
    path: str | Path, model: nn.Module, trainable_only: bool, metadata: dict | None = None
) -> None:
    """One safetensors file, written beside its final name and renamed (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from its group
        tensors = model_tensors(model, trainable_only)
        _safetensors_write(Path(tmp), tensors, _weights_metadata(trainable_only, metadata))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync(path.parent)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # SafetensorError, OSError: report the file, not a traceback
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({_first_line(e)})"
        ) from None
    return tensors, meta


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _fit_problems(
    tensors: dict[str, torch.Tensor], model: nn.Module, required: list[str]
) -> list[str]:
    """Why ``tensors`` cannot be loaded into ``model``: shapes, unknown and missing names."""
    own = model.state_dict()
    unknown = [k for k in tensors if k not in own]
    shapes = [
        f"{k}: saved {tuple(v.shape)}, model {tuple(own[k].shape)}"
        for k, v in tensors.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in required if k not in tensors]
    problems = []
    labels = ("with another shape", "not in the model", "missing (trainable)")
    for label, items in zip(labels, (shapes, unknown, missing)):
        if items:
            problems.append(f"{len(items)} tensors {label} (e.g. {items[0]})")
    return problems


def _load_tensors(
    path: Path, model: nn.Module, what: str = "weights", trainable_from: nn.Module | None = None
) -> list[str]:
    """Check then copy; nothing is copied when anything does not fit.

    A trainable-only file must hold every trainable tensor of ``trainable_from`` (default
    ``model``; the EMA copy has no trainable flags of its own), a full file every tensor.
    """
    tensors, meta = _read_safetensors(path)
    if meta.get("trainable_only", "false") == "true":
        ref = trainable_from if trainable_from is not None else model
        required = [n for n, p in ref.named_parameters() if p.requires_grad]
    else:
        required = list(model.state_dict())
    problems = _fit_problems(tensors, model, required)
    if problems:
        raise CheckpointError(
            f"{path}: {what} do not fit the model: {'; '.join(problems)}; build the model "
            "with the run's config (config.json beside the checkpoint)"
        )
    own = model.state_dict()
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value)
    return list(tensors)


def load_model_weights(path: str | Path, model: nn.Module) -> list[str]:
    """Load an aptune safetensors file (trainable-only or full) into ``model``.

    Every saved tensor must exist in the model with the same shape, and every tensor the
    file promises (all trainable ones, or the whole state dict) must be there; otherwise a
    one-line :class:`~aptune.models.checkpoint_io.CheckpointError` names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    return _load_tensors(path, unwrap(model))
