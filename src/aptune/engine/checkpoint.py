"""Training state on disk: atomic checkpoint folders, auto-resume, trainable-only weights.

A checkpoint is a folder ``output_dir/checkpoint-NNNN/`` (or ``checkpoint-best``)::

    model.safetensors   weights; only the trainable tensors for PEFT methods (a few KB
                        for APT instead of the whole backbone), the full state dict else
    ema.safetensors     the EMA weights, same selection (only with --model_ema)
    state.pt            optimizer, AMP scaler, RNG states, ``extra`` (global step, best
                        metric ...): plain types only, read with ``weights_only=True``
    config.json         the resolved run config, so the folder rebuilds its model
    COMPLETE            written last: JSON with every file's size

The folder is written under a ``.tmp-checkpoint-*`` name and renamed into place only when
complete, so a run killed at any moment leaves either the old or the new checkpoint,
never a half one; :func:`find_latest_checkpoint` still verifies marker, sizes and headers
because disks and users do strange things. One writer (rank 0) per ``output_dir``.

RNG state is the writing process's; in a multi-process run the other ranks should reseed
(``seed + rank``) rather than restore rank 0's stream.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import nn

from aptune.engine.distributed import unwrap
from aptune.engine.weights import (
    FORMAT,
    MODEL_FILE,
    _first_line,
    _fsync,
    _json_default,
    _load_tensors,
    _safetensors_write,
    _weights_metadata,
    _write_text,
    load_model_weights,
    model_tensors,
    save_model_weights,
)
from aptune.models.checkpoint_io import CheckpointError

__all__ = [
    "FORMAT", "MODEL_FILE", "ResumeError", "capture_rng", "check_complete",
    "find_latest_checkpoint", "load_model_weights", "load_training_state", "model_tensors",
    "restore_rng", "save_best", "save_model_weights", "save_training_state",
]  # fmt: skip

log = logging.getLogger("aptune")

EMA_FILE, STATE_FILE = "ema.safetensors", "state.pt"
CONFIG_FILE, COMPLETE_FILE = "config.json", "COMPLETE"
BEST_NAME = "checkpoint-best"
TMP_PREFIX = ".tmp-checkpoint-"
_EPOCH_DIR = re.compile(r"^checkpoint-(\d+)$")


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed from; the one-line message names file and fix."""


# -- RNG ------------------------------------------------------------------------------------
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


_restore_rng = restore_rng


# -- checkpoint folders ---------------------------------------------------------------------
def _optimizer_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """Parameter names per optimiser group: torch saves only positions, we check names."""
    names = {id(p): n for n, p in unwrap(model).named_parameters()}
    return [[names.get(id(p), "?") for p in g["params"]] for g in optimizer.param_groups]


def _plain(obj: Any, where: str = "extra") -> Any:
    """``extra`` as types ``torch.load(weights_only=True)`` accepts (numpy scalars -> Python).

    Checked at save time: an unreadable state.pt would only show up at resume, too late.
    """
    if isinstance(obj, dict):
        return {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    raise TypeError(f"checkpoint {where} holds a {type(obj).__name__}; store plain values")


def _write_folder(
    folder: Path, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
    scaler: Any, ema: Any, config: dict | None, extra: dict | None, trainable_only: bool,
) -> None:  # fmt: skip
    """Every file of a checkpoint, each fsynced, the COMPLETE marker (with sizes) last."""
    meta = _weights_metadata(trainable_only, {"epoch": epoch})
    _safetensors_write(folder / MODEL_FILE, model_tensors(model, trainable_only), meta)
    if ema is not None:
        ema_state = {k: v.detach().cpu().contiguous() for k, v in ema.state_dict().items()}
        if trainable_only:
            keep = model_tensors(model, True).keys()
            ema_state = {k: v for k, v in ema_state.items() if k in keep}
        _safetensors_write(folder / EMA_FILE, ema_state, meta)
    state = {
        "format": FORMAT,
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "optimizer_names": _optimizer_names(model, optimizer) if optimizer is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "extra": _plain(dict(extra or {})),
        "rng": capture_rng(),
    }
    with open(folder / STATE_FILE, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    text = json.dumps(config or {}, indent=2, sort_keys=True, default=_json_default)
    _write_text(folder / CONFIG_FILE, text + "\n")
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    _write_text(folder / COMPLETE_FILE, json.dumps({"epoch": int(epoch), "files": sizes}) + "\n")
    _fsync(folder)


def _save_folder(output_dir: str | Path, name: str, epoch: int, **kw: Any) -> Path:
    """Write into ``.tmp-checkpoint-*`` in ``output_dir``, then rename to ``name``."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the run from its group
    final = out / name
    try:
        _write_folder(tmp, epoch, **kw)
        aside = None
        if final.exists():  # rename() cannot replace a non-empty directory
            aside = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-", dir=out))
            os.replace(final, aside / name)
        os.replace(tmp, final)
        _fsync(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    for stale in out.glob(f"{TMP_PREFIX}*"):  # left by killed runs (one writer per dir)
        log.info("removing unfinished checkpoint %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_training_state(
    output_dir: str | Path, epoch: int, model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None, ema: Any = None,
    config: dict | None = None, extra: dict | None = None,
    trainable_only: bool = True, keep_last: int = 2,
) -> Path:  # fmt: skip
    """Atomically write ``output_dir/checkpoint-{epoch:04d}``; keep the last ``keep_last``.

    ``keep_last <= 0`` keeps every epoch checkpoint; ``checkpoint-best`` is never pruned.
    Returns the folder.
    """
    kw = dict(model=model, optimizer=optimizer, scaler=scaler, ema=ema, config=config)
    kw.update(extra=extra, trainable_only=trainable_only)
    final = _save_folder(output_dir, f"checkpoint-{epoch:04d}", epoch, **kw)
    if keep_last > 0:
        for old in sorted(_epoch_dirs(Path(output_dir)), key=_epoch_of)[:-keep_last]:
            if old != final:
                log.info("removing old checkpoint %s (keep_last=%d)", old, keep_last)
                shutil.rmtree(old, ignore_errors=True)
    return final


def save_best(
    output_dir: str | Path, epoch: int, model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None, ema: Any = None,
    config: dict | None = None, extra: dict | None = None,
    trainable_only: bool = True, keep_last: int = 2,
) -> Path:  # fmt: skip
    """Atomically (re)write ``output_dir/checkpoint-best``; ``keep_last`` is ignored."""
    kw = dict(model=model, optimizer=optimizer, scaler=scaler, ema=ema, config=config)
    kw.update(extra=extra, trainable_only=trainable_only)
    return _save_folder(output_dir, BEST_NAME, epoch, **kw)


def _epoch_of(path: Path) -> int:
    return int(_EPOCH_DIR.match(path.name).group(1))  # type: ignore[union-attr]


def _epoch_dirs(out: Path) -> list[Path]:
    """``checkpoint-NNNN`` folders (never ``.tmp-*`` or ``checkpoint-best``)."""
    found = out.iterdir() if out.is_dir() else ()
    return [p for p in found if p.is_dir() and _EPOCH_DIR.match(p.name)]


def check_complete(folder: str | Path) -> None:
    """Raise :class:`ResumeError` unless ``folder`` is a whole, readable checkpoint.

    Cheap checks only: marker present, every listed file with its recorded size,
    safetensors headers valid, ``state.pt`` a whole zip archive, ``config.json`` JSON.
    """
    folder = Path(folder)
    marker = folder / COMPLETE_FILE
    fix = "it was not written completely; delete it or resume from an older checkpoint"
    if not marker.is_file():
        raise ResumeError(f"{folder}: no {COMPLETE_FILE} marker: {fix}")
    try:
        sizes = json.loads(marker.read_text())["files"]
        for name, size in sizes.items():
            if (folder / name).stat().st_size != size:
                raise ResumeError(f"{folder / name}: size differs from {COMPLETE_FILE}: {fix}")
        for name in (MODEL_FILE, EMA_FILE):
            if (folder / name).exists():
                with safe_open(str(folder / name), framework="pt") as f:
                    f.metadata()
        with zipfile.ZipFile(folder / STATE_FILE):
            pass
        json.loads((folder / CONFIG_FILE).read_text())
    except ResumeError:
        raise
    except Exception as e:
        raise ResumeError(f"{folder}: unreadable checkpoint ({_first_line(e)}): {fix}") from None


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest complete ``checkpoint-NNNN`` in ``output_dir`` (None if there is none).

    ``.tmp-*`` folders are never candidates; incomplete or corrupt ones are skipped with
    a warning naming them, so a run killed while saving resumes from the one before.
    """
    for folder in sorted(_epoch_dirs(Path(output_dir)), key=_epoch_of, reverse=True):
        try:
            check_complete(folder)
        except ResumeError as e:
            log.warning("skipping checkpoint: %s", e)
            continue
        return folder
    return None


def load_training_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None, ema: Any = None, restore_rng: bool = True,
) -> dict:  # fmt: skip
    """Restore a checkpoint folder into the given objects; ``{"epoch", "extra", "config"}``.

    ``epoch`` is the last finished epoch (the run continues at ``epoch + 1``).
    Everything is checked before the model is touched where possible; any mismatch is a
    one-line :class:`ResumeError` naming the file and the fix. ``state.pt`` is read with
    ``torch.load(weights_only=True)`` only: a checkpoint can never run code.
    """
    folder = Path(path)
    if folder.is_file():  # --resume may name a file inside the folder
        folder = folder.parent
    check_complete(folder)
    fix = "resume with the same --model/--transfer_type/prompt flags, or a fresh --output_dir"
    try:
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ResumeError(f"{folder / STATE_FILE}: cannot be read ({_first_line(e)})") from None
    bare = unwrap(model)
    if optimizer is not None and state.get("optimizer") is not None:
        saved, now = state.get("optimizer_names"), _optimizer_names(bare, optimizer)
        if saved is not None and saved != now:
            raise ResumeError(
                f"{folder / STATE_FILE}: optimizer parameter groups differ from this run's "
                f"(saved {[len(g) for g in saved]} tensors per group, now "
                f"{[len(g) for g in now]}; e.g. --layer_decay changed); {fix}"
            )
    try:
        _load_tensors(folder / MODEL_FILE, bare)
        if ema is not None:
            if (folder / EMA_FILE).exists():
                _load_tensors(folder / EMA_FILE, ema.module, "EMA weights", trainable_from=bare)
            else:
                log.warning("%s has no EMA weights: the EMA restarts from the model", folder)
                ema.set(bare)
    except CheckpointError as e:
        raise ResumeError(str(e)) from None  # already names the file and the fix
    try:
        if optimizer is not None:
            if state.get("optimizer") is None:
                log.warning("%s has no optimizer state: the optimizer starts fresh", folder)
            else:
                optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, RuntimeError) as e:
        raise ResumeError(f"{folder / STATE_FILE}: {_first_line(e)}; {fix}") from None
    if restore_rng and state.get("rng") is not None:
        _restore_rng(state["rng"])  # the parameter shadows restore_rng()
    config = json.loads((folder / CONFIG_FILE).read_text())
    return {"epoch": int(state["epoch"]), "extra": dict(state.get("extra") or {}), "config": config}
