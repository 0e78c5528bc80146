"""Training state on disk: atomic checkpoint folders, auto-resume, trainable-only weights.

A checkpoint is a folder ``output_dir/checkpoint-NNNN/`` (or ``checkpoint-best``)::

    model.safetensors   weights; only the trainable tensors for PEFT methods (a few KB
                        for APT instead of the whole backbone), the full state dict else
    ema.safetensors     the EMA weights, same selection (only with --model_ema)
    state.pt            optimizer, AMP scaler, RNG states, ``extra`` (global step, best
                        metric ...): plain types only, read with ``weights_only=True``
    config.json         the resolved run config, so the folder rebuilds its model
    COMPLETE            written last: JSON with every file's size and sha256

Mid-epoch checkpoints (``--save_ckpt_steps``, preemption) are named
``checkpoint-EEEE-stepSSSSSS``: epoch EEEE in progress, SSSSSS optimiser steps of it done;
they sort before ``checkpoint-EEEE``. Readers verify every sha256; a corrupt folder is
named in one line and the next newest verified one is used.

The folder is written under a ``.tmp-checkpoint-*`` name and renamed into place only when
complete, so a run killed at any moment leaves either the old or the new checkpoint,
never a half one; :func:`find_latest_checkpoint` still verifies marker, hashes and headers
because disks and users do strange things. One writer (rank 0) per ``output_dir``. A full
disk or an I/O error is one line (:class:`CheckpointWriteError`) and the temporary
folder is removed; the previous checkpoint is untouched.

RNG state (``rng.py``) is the writing process's; in a multi-process run the other ranks
reseed (``seed + rank``) or, mid-epoch, restore their own states gathered into ``extra``.
"""

from __future__ import annotations

import json
import logging
import os
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
from aptune.engine.integrity import (
    IntegrityError,
    free_bytes,
    human,
    is_disk_error,
    manifest,
    verify_files,
)
from aptune.engine.rng import capture_rng, restore_rng
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
    "FORMAT", "MODEL_FILE", "CheckpointWriteError", "ResumeError", "capture_rng",
    "check_complete", "checkpoint_folders", "checkpoint_name", "find_latest_checkpoint",
    "latest_verified",
    "load_model_weights", "load_training_state", "model_tensors", "restore_rng",
    "save_best", "save_model_weights", "save_training_state",
]  # fmt: skip

log = logging.getLogger("aptune")
_restore_rng = restore_rng

EMA_FILE, STATE_FILE = "ema.safetensors", "state.pt"
CONFIG_FILE, COMPLETE_FILE = "config.json", "COMPLETE"
BEST_NAME = "checkpoint-best"
TMP_PREFIX = ".tmp-checkpoint-"
_EPOCH_DIR = re.compile(r"^checkpoint-(\d+)(?:-step(\d+))?$")
_MARGIN = 64 << 10  # config, marker, safetensors headers, zip overhead


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed from; the one-line message names file and fix."""


class CheckpointWriteError(ResumeError):
    """The disk refused a checkpoint (full, I/O error). A ResumeError so the CLI prints
    the one-line message without a traceback and exits non-zero."""


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
    """Every file of a checkpoint, each fsynced, the COMPLETE marker (sizes, sha256s) last."""
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
    marker = {"epoch": int(epoch), "files": manifest(folder)}
    _write_text(folder / COMPLETE_FILE, json.dumps(marker) + "\n")
    _fsync(folder)


def _nbytes(obj: Any) -> int:
    """Bytes of every tensor in a (nested) state: what a checkpoint is about to write."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_nbytes(v) for v in obj)
    return 0


def estimate_bytes(model: nn.Module, optimizer: Any, ema: Any, trainable_only: bool) -> int:
    n = _nbytes(model_tensors(model, trainable_only)) * (2 if ema is not None else 1)
    if optimizer is not None:
        n += _nbytes(optimizer.state_dict()["state"])
    return n + _MARGIN


def _write_error(out: Path, name: str, needed: int, what: str) -> CheckpointWriteError:
    prev = find_latest_checkpoint(out, hashes=False, quiet=True)
    kept = f"the previous checkpoint {prev} is intact" if prev else "no earlier checkpoint"
    return CheckpointWriteError(
        f"{out / name}: not written ({what}): needs {human(needed)}, {human(free_bytes(out))} "
        f"free in {out}; {kept}; free space or give another --output_dir, then rerun"
    )


def _save_folder(output_dir: str | Path, name: str, epoch: int, **kw: Any) -> Path:
    """Write into ``.tmp-checkpoint-*`` in ``output_dir``, then rename to ``name``.

    Free space is compared with the tensors' bytes first; ENOSPC/EIO while writing anyway
    remove the temporary folder and raise :class:`CheckpointWriteError` (one line).
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    needed = estimate_bytes(kw["model"], kw["optimizer"], kw["ema"], kw["trainable_only"])
    if needed > free_bytes(out):
        raise _write_error(out, name, needed, "not enough free space")
    final = out / name
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=out))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the run from its group
        _write_folder(tmp, epoch, **kw)
        aside = None
        if final.exists():  # rename() cannot replace a non-empty directory
            aside = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}old-", dir=out))
            os.replace(final, aside / name)
        os.replace(tmp, final)
        _fsync(out)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_disk_error(e):
            raise _write_error(out, name, needed, _first_line(e)) from None
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    for stale in out.glob(f"{TMP_PREFIX}*"):  # left by killed runs (one writer per dir)
        log.info("removing unfinished checkpoint %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    return final


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """``checkpoint-EEEE`` (epoch done) or ``checkpoint-EEEE-stepSSSSSS`` (mid-epoch)."""
    return f"checkpoint-{epoch:04d}" if step is None else f"checkpoint-{epoch:04d}-step{step:06d}"


def save_training_state(
    output_dir: str | Path, epoch: int, model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None, scaler: Any = None, ema: Any = None,
    config: dict | None = None, extra: dict | None = None,
    trainable_only: bool = True, keep_last: int = 2, step: int | None = None,
) -> Path:  # fmt: skip
    """Atomically write ``checkpoint-{epoch:04d}`` (``step`` None: epoch done) or the
    mid-epoch ``checkpoint-{epoch:04d}-step{step:06d}`` (state ``epoch`` is then
    ``epoch - 1``, the last finished one); keep the newest ``keep_last`` of both kinds.

    The folder just written is the newest and verified, so pruning never removes the
    newest verified checkpoint. ``keep_last <= 0`` keeps all; ``checkpoint-best`` is never
    pruned. Returns the folder.
    """
    kw = dict(model=model, optimizer=optimizer, scaler=scaler, ema=ema, config=config)
    kw.update(extra=extra, trainable_only=trainable_only)
    done = epoch if step is None else epoch - 1
    final = _save_folder(output_dir, checkpoint_name(epoch, step), done, **kw)
    if keep_last > 0:
        for old in checkpoint_folders(Path(output_dir))[keep_last:]:
            if old != final:
                log.info("removing old checkpoint %s (--keep_ckpts %d)", old, keep_last)
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


def _order(path: Path) -> tuple[int, int, int]:
    """Sort key: epoch, then mid-epoch folders (by step) before the epoch's own folder."""
    m = _EPOCH_DIR.match(path.name)
    assert m is not None
    step = m.group(2)
    return (int(m.group(1)), 0 if step is not None else 1, int(step or 0))


def checkpoint_folders(out: str | Path) -> list[Path]:
    """``checkpoint-EEEE[-stepSSSSSS]`` folders, newest first (no ``.tmp-*``, no best)."""
    out = Path(out)
    found = out.iterdir() if out.is_dir() else ()
    dirs = [p for p in found if p.is_dir() and _EPOCH_DIR.match(p.name)]
    return sorted(dirs, key=_order, reverse=True)


def check_complete(folder: str | Path, hashes: bool = True) -> None:
    """Raise :class:`ResumeError` unless ``folder`` is a whole, unchanged checkpoint.

    Marker present, every listed file with its recorded size and (``hashes``) sha256,
    safetensors headers valid, ``state.pt`` a whole zip archive, ``config.json`` JSON.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ResumeError(f"{folder}: not found; give a checkpoint folder of an aptune run")
    fix = "delete it or resume from an older checkpoint"
    try:
        verify_files(folder, hashes)
    except IntegrityError as e:
        raise ResumeError(f"corrupt checkpoint: {e}: {fix}") from None
    try:
        for name in (MODEL_FILE, EMA_FILE):
            if (folder / name).exists():
                with safe_open(str(folder / name), framework="pt") as f:
                    f.metadata()
        with zipfile.ZipFile(folder / STATE_FILE):
            pass
        json.loads((folder / CONFIG_FILE).read_text())
    except Exception as e:
        raise ResumeError(f"{folder}: unreadable checkpoint ({_first_line(e)}): {fix}") from None


def find_latest_checkpoint(
    output_dir: str | Path, hashes: bool = True, quiet: bool = False
) -> Path | None:
    """Newest verified checkpoint folder in ``output_dir`` (None if there is none).

    ``.tmp-*`` folders are never candidates; incomplete or corrupt ones are skipped with
    one line naming them, so a run resumes from the next newest verified checkpoint.
    """
    for folder in checkpoint_folders(output_dir):
        try:
            check_complete(folder, hashes)
        except ResumeError as e:
            if not quiet:
                log.warning("skipping checkpoint (falling back to an older one): %s", e)
            continue
        return folder
    return None


def latest_verified(output_dir: str | Path) -> Path | None:
    """:func:`find_latest_checkpoint`, but a run whose checkpoints all fail verification
    stops with one line naming the newest instead of silently starting over."""
    found = find_latest_checkpoint(output_dir)
    folders = checkpoint_folders(output_dir)
    if found is None and folders:
        try:
            check_complete(folders[0])
        except ResumeError as e:
            raise ResumeError(f"no verified checkpoint left in {output_dir} ({e})") from None
    return found


def load_training_state(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
    scaler: Any = None, ema: Any = None, restore_rng: bool = True, verified: bool = False,
) -> dict:  # fmt: skip
    """Restore a checkpoint folder into the given objects;
    ``{"epoch", "extra", "config", "rng"}``.

    ``epoch`` is the last finished epoch (the run continues at ``epoch + 1``; a mid-epoch
    checkpoint says where in ``extra``). ``verified``: the caller already checked the
    sha256s (:func:`find_latest_checkpoint`), so they are not hashed twice.
    Everything is checked before the model is touched where possible; any mismatch is a
    one-line :class:`ResumeError` naming the file and the fix. ``state.pt`` is read with
    ``torch.load(weights_only=True)`` only: a checkpoint can never run code.
    """
    folder = Path(path)
    if folder.is_file():  # --resume may name a file inside the folder
        folder = folder.parent
    check_complete(folder, hashes=not verified)
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
    extra = dict(state.get("extra") or {})
    return {"epoch": int(state["epoch"]), "extra": extra, "config": config, "rng": state.get("rng")}
