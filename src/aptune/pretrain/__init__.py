"""VideoMAE self-supervised pre-training (``aptune pretrain``) and the bundled backbone.

``aptune.cli`` imports this package to build its parsers on every call, so it stays light:
the options, the model, masking and the loop load on first use
(``aptune.pretrain.PretrainVideoMAE`` works as usual through the lazy ``__getattr__``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_BACKBONE = "demo_backbone.safetensors"
_LAZY = {
    "PretrainConfig": "aptune.pretrain.config",
    "PretrainVideoMAE": "aptune.pretrain.model",
    "build_pretrain_model": "aptune.pretrain.model",
    "pixel_targets": "aptune.pretrain.model",
    "masked_mse": "aptune.pretrain.model",
    "tube_mask": "aptune.pretrain.masking",
    "pretrain": "aptune.pretrain.runner",
    "run_pretrain": "aptune.pretrain.runner",
}


def demo_backbone_path() -> Path:
    """The bundled pre-trained tiny encoder (``aptune/assets/demo_backbone.safetensors``)."""
    from aptune.models.checkpoint_files import checkpoint_error

    path = Path(__file__).resolve().parent.parent / "assets" / DEMO_BACKBONE
    if not path.is_file():
        raise checkpoint_error(path, "the bundled backbone is missing; rebuild it with "
                               "scripts/make_demo_backbone.sh or reinstall aptune")  # fmt: skip
    return path


def demo_backbone_config(path: str | Path | None = None) -> dict[str, Any]:
    """How the bundled backbone (or another ``aptune pretrain`` output) was built.

    ``build_model_kwargs`` are the arguments ``aptune.build_model`` needs besides
    ``checkpoint``/``num_classes``/method options (model name, frames, input size,
    tubelet); ``data`` describes the videos it was pre-trained on (frames, size,
    sampling rate), which the demo's labelled videos should match. ``path`` is a file
    written by ``aptune pretrain`` (``pretrain.safetensors``) or by
    ``scripts/make_demo_backbone.sh``; both carry the architecture in their metadata.
    A file that is none of these is a one-line ``CheckpointError`` naming it.
    """
    from safetensors import safe_open

    from aptune.models.checkpoint_files import checkpoint_error, first_line

    source = Path(path) if path is not None else demo_backbone_path()
    if not source.is_file():
        raise checkpoint_error(source, "no such backbone file")
    try:
        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors
        raise checkpoint_error(source, f"not a safetensors file ({first_line(exc)})") from exc
    if "architecture" not in meta:
        raise checkpoint_error(source, "no 'architecture' metadata; use a pretrain.safetensors "
                               "written by aptune pretrain or a file from "
                               "scripts/make_demo_backbone.sh")  # fmt: skip
    arch = json.loads(meta["architecture"])
    return {
        "build_model_kwargs": {
            "model": arch.get("model", "vit_micro_patch16_224"),
            "num_frames": arch.get("num_frames", 8),
            "input_size": arch.get("input_size", 64),
            "tubelet_size": arch.get("tubelet_size", 2),
        },
        "sampling_rate": arch.get("sampling_rate", 2),
        "data": json.loads(meta.get("data", "{}")),
        "summary": json.loads(meta.get("summary", "{}")),
    }


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aptune.pretrain' has no attribute {name!r}")


__all__ = [
    "DEMO_BACKBONE",
    "demo_backbone_config",
    "demo_backbone_path",
    *_LAZY,
]
