"""Read checkpoint files without running code from them.

Torch pickles are read only with ``torch.load(..., weights_only=True)`` plus an explicit
allowlist of the plain types real VideoMAE / APT / DeepSpeed files carry. Anything else in
the file is refused with a one-line :class:`CheckpointError` naming the file and the type:
unpickling an arbitrary class could run code, so we never fall back to full unpickling.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from aptune.models.checkpoint_files import (
    HF_WEIGHT_FILES,
    CheckpointError,
    checkpoint_error,
    first_line,
    read_json,
)
from aptune.models.hub import parse_hub_id, resolve_hub_checkpoint

DEEPSPEED_FILE = "mp_rank_00_model_states.pt"


class _Opaque:
    """Stand-in for a bookkeeping object we never use (e.g. DeepSpeed's loss scaler).

    The unpickler creates it with ``__new__`` and stores the pickled state in ``__dict__``;
    no method of the real class (which need not even be installed) is called.
    """


# Objects DeepSpeed's fp16 optimizer puts in ``optimizer``: harmless placeholders.
_OPAQUE_NAMES = (
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
)

#: Globals allowed beyond torch's own weights-only set (tensors, dicts, lists, OrderedDict,
#: torch.Size, set, ...): what ``{"model", "optimizer", "epoch", "scaler", "args"}`` files
#: of VideoMAE/APT and DeepSpeed ``mp_rank_00_model_states.pt`` files hold.
SAFE_GLOBALS: list[Any] = [argparse.Namespace, OrderedDict, torch.Size] + [
    (_Opaque, name) for name in _OPAQUE_NAMES
]


def is_hf_folder(path: str | Path) -> bool:
    """A folder with HF weights and a transformers ``config.json`` (``save_pretrained``
    output). The config must name its ``model_type``/``architectures``: an aptune
    checkpoint folder also holds ``config.json`` + ``model.safetensors``, with run flags."""
    p = Path(path)
    if not (p.is_dir() and any((p / n).is_file() for n in HF_WEIGHT_FILES)):
        return False
    try:
        cfg = json.loads((p / "config.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and ("model_type" in cfg or "architectures" in cfg)


def _highest_checkpoint(folder: Path) -> Path | None:
    """Latest ``checkpoint-N`` (DeepSpeed folder or ``.pth``) in an output dir."""
    latest = folder / "latest"  # DeepSpeed writes the tag of the last save here
    if latest.is_file():
        tag = latest.read_text().strip()
        if (folder / tag).exists():
            return folder / tag
    found: list[tuple[int, Path]] = []
    for p in folder.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)(\.pth|\.pt)?", p.name)
        if m and (p.is_file() or (p / DEEPSPEED_FILE).is_file()):
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def resolve_checkpoint_path(path: str | Path) -> tuple[Path, str]:
    """Map a user path (file, DeepSpeed folder, output dir, HF folder, Hub id) to (file, kind).

    A Hub id (``ORG/NAME[@REVISION]``, ``hf://ORG/NAME``) that is not a local path
    resolves to its snapshot folder in the Hub cache (see ``models/hub.py``).
    """
    if parse_hub_id(path) is not None:
        return resolve_hub_checkpoint(path), "hf"
    p = Path(path).expanduser()
    if not p.exists():
        raise checkpoint_error(p, "no such file or folder; check the --finetune / checkpoint path")
    if p.is_file():
        if p.suffix == ".safetensors" or _looks_like_safetensors(p):
            return p, "safetensors"
        return p, "deepspeed" if p.name == DEEPSPEED_FILE else "pickle"
    if is_hf_folder(p):
        return p, "hf"
    if (p / DEEPSPEED_FILE).is_file():
        return p / DEEPSPEED_FILE, "deepspeed"
    for name in ("model.safetensors", "pretrain.safetensors"):  # HF-less / aptune pretrain run
        if (p / name).is_file():
            return p / name, "safetensors"
    inner = _highest_checkpoint(p)
    if inner is not None:
        return resolve_checkpoint_path(inner)
    raise checkpoint_error(
        p,
        "folder holds no checkpoint (expected config.json + model.safetensors, "
        f"{DEEPSPEED_FILE}, checkpoint-N/ or checkpoint-N.pth); pass the file itself",
    )


def _looks_like_safetensors(p: Path) -> bool:
    """safetensors files start with an 8-byte header length and a JSON object."""
    with open(p, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return int.from_bytes(head[:8], "little") < p.stat().st_size


def load_torch_file(path: Path) -> Any:
    """``torch.load`` with weights_only and our allowlist; one-line errors for bad files."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise checkpoint_error(
            path, "file is empty (an interrupted download or save?); fetch it again"
        )
    if not (head.startswith(b"PK") or head.startswith(b"\x80")):  # zip (torch>=1.6) or pickle
        raise checkpoint_error(
            path, "not a PyTorch checkpoint (neither a torch zip file nor a pickle)"
        )
    try:
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e)) or re.search(
            r"unrecognized function (\S+)", str(e)
        )
        if m:
            raise checkpoint_error(
                path,
                f"refused: the file references {m.group(1)!r}, not a plain data type, and "
                "unpickling it could run code; re-save the weights only "
                "(torch.save(model.state_dict(), ...)) or as .safetensors",
            ) from None
        raise checkpoint_error(path, f"refused by the safe loader: {first_line(e)}") from None
    except Exception as e:  # noqa: BLE001 - any parse failure means a damaged file
        msg = first_line(e)
        if "zip" in msg.lower() or "central directory" in msg or isinstance(e, EOFError):
            why = "truncated or corrupt (an interrupted download or save?); fetch it again"
            raise checkpoint_error(path, why) from None
        raise checkpoint_error(
            path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {msg})"
        ) from None


def load_safetensors_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors and the string metadata of a ``.safetensors`` file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            return {k: f.get_tensor(k) for k in f.keys()}, dict(meta)  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types; all mean "bad file"
        raise checkpoint_error(
            path, f"not a readable .safetensors file ({first_line(e)})"
        ) from None


def _read_hf_weights(folder: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Weights of a HF folder: single file or sharded with an ``*.index.json``."""
    for name in HF_WEIGHT_FILES:
        f = folder / name
        if not f.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(read_json(f).get("weight_map", {}).values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(_read_hf_weights_file(folder / shard))
            return sd, f
        return _read_hf_weights_file(f), f
    raise checkpoint_error(
        folder, "Hugging Face folder without model.safetensors or pytorch_model.bin"
    )


def _read_hf_weights_file(f: Path) -> dict[str, torch.Tensor]:
    if f.suffix == ".safetensors":
        return load_safetensors_file(f)[0]
    obj = load_torch_file(f)
    if not isinstance(obj, dict):
        raise checkpoint_error(f, f"holds a {type(obj).__name__}, not a state dict")
    return obj


def _select_state_dict(obj: Any, path: Path, model_key: str) -> tuple[dict, str | None]:
    """The state dict under the first of ``model_key`` ('a|b') present, else the object."""
    if not isinstance(obj, dict):
        raise checkpoint_error(path, f"holds a {type(obj).__name__}, not a checkpoint dict")
    for key in model_key.split("|"):
        if key and isinstance(obj.get(key), dict):
            return obj[key], key
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, None
    if "target_encoder" in obj or "ema_encoder" in obj:
        raise checkpoint_error(
            path, "a V-JEPA 2 pre-training file (target_encoder); build it with a vjepa2_* "
            "model name (e.g. --model vjepa2_vit_large_patch16_256)"
        )  # fmt: skip
    top = ", ".join(list(map(str, obj))[:8])
    raise checkpoint_error(
        path,
        f"no state dict under {model_key!r} (top-level keys: {top}); "
        "name the right one with --model_key",
    )


def read_checkpoint(
    path: str | Path, model_key: str = "model|module"
) -> tuple[dict[str, torch.Tensor], dict]:
    """Read any supported file/folder -> (raw state dict under the first matching model_key, info).

    ``info`` has ``file`` (what was read), ``kind`` (pickle|deepspeed|safetensors|hf),
    ``model_key``, ``metadata`` (safetensors), ``hf_config`` (HF folders), ``args`` (the
    training Namespace as a dict, when the file carries one) and ``epoch``.
    """
    file, kind = resolve_checkpoint_path(path)
    info: dict[str, Any] = {"source": str(path), "file": str(file), "kind": kind}
    if kind == "hf":
        sd, wfile = _read_hf_weights(file)
        info.update(file=str(wfile), hf_config=read_json(file / "config.json"), model_key=None)
    elif kind == "safetensors":
        sd, meta = load_safetensors_file(file)
        info.update(metadata=meta, model_key=None)
    else:
        obj = load_torch_file(file)
        sd, used = _select_state_dict(obj, file, model_key)
        info["model_key"] = used
        if used is not None:
            args = obj.get("args")
            if isinstance(args, argparse.Namespace):
                info["args"] = vars(args)
            if isinstance(obj.get("epoch"), int):
                info["epoch"] = obj["epoch"]
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise checkpoint_error(
            file, f"state dict has non-tensor entries ({', '.join(map(str, bad[:5]))})"
        )
    if not sd:
        raise checkpoint_error(file, "state dict is empty")
    return dict(sd), info


__all__ = [
    "CheckpointError",
    "SAFE_GLOBALS",
    "is_hf_folder",
    "read_checkpoint",
    "resolve_checkpoint_path",
]
