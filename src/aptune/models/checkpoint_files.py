"""What every checkpoint reader shares: its one error type, and the files of a HF folder.

Local reading (``checkpoint_io``), Hub resolution (``hub``), Hugging Face configs
(``hf_config``) and key conversion all raise :class:`CheckpointError` with the same
one-line ``PATH: why`` shape, read JSON the same way, and agree on which files of a
Hugging Face folder hold its weights. Kept in a module of its own, below all of them, so
that none of them needs another's internals and imports run one way only
(``checkpoint_io`` -> ``hub`` -> here).
"""

from __future__ import annotations

import json
from pathlib import Path

#: Weight files of a Hugging Face folder, in order of preference.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def checkpoint_error(path: Path | str, why: str) -> CheckpointError:
    """``PATH: why``: every reader's error starts with the file, so a log line says which."""
    return CheckpointError(f"{path}: {why}")


def first_line(e: BaseException) -> str:
    """An exception's first line, shortened: parser errors can span pages."""
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def read_json(path: Path) -> dict:
    """A JSON object from a file, or a one-line CheckpointError."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise checkpoint_error(path, f"unreadable JSON ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise checkpoint_error(path, "expected a JSON object")
    return obj


__all__ = ["HF_WEIGHT_FILES", "CheckpointError", "checkpoint_error", "first_line", "read_json"]
