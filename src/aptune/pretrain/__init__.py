"""VideoMAE self-supervised pre-training (``aptune pretrain``) and the bundled backbone.

``add_pretrain_parser`` is imported by ``aptune.cli`` on every call, so this module stays
light: the model, masking and the loop load on first use (``aptune.pretrain.PretrainVideoMAE``
works as usual through the lazy ``__getattr__``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aptune.pretrain.cli import add_pretrain_parser

DEMO_BACKBONE = "demo_backbone.safetensors"
_LAZY = {
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
    path = Path(__file__).resolve().parent.parent / "assets" / DEMO_BACKBONE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: the bundled backbone is missing; rebuild it with "
            "scripts/make_demo_backbone.sh or reinstall aptune"
        )
    return path


def demo_backbone_config(path: str | Path | None = None) -> dict[str, Any]:
    """How the bundled backbone (or another ``aptune pretrain`` output) was built.

    ``build_model_kwargs`` are the arguments ``aptune.build_model`` needs besides
    ``checkpoint``/``num_classes``/method options (model name, frames, input size,
    tubelet); ``data`` describes the videos it was pre-trained on (frames, size,
    sampling rate), which the demo's labelled videos should match. ``path`` is a file
    written by ``aptune pretrain`` (``pretrain.safetensors``) or by
    ``scripts/make_demo_backbone.sh``; both carry the architecture in their metadata.
    """
    from safetensors import safe_open

    source = Path(path) if path is not None else demo_backbone_path()
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such backbone file")
    try:
        with safe_open(str(source), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors
        raise ValueError(f"{source}: not a safetensors file ({exc})") from exc
    if "architecture" not in meta:
        raise ValueError(
            f"{source}: no 'architecture' metadata; use a pretrain.safetensors written by "
            "aptune pretrain or a file from scripts/make_demo_backbone.sh"
        )
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
    "add_pretrain_parser",
    "demo_backbone_config",
    "demo_backbone_path",
    *_LAZY,
]
