"""Hugging Face VideoMAE ``config.json`` -> keyword arguments of our VisionTransformer.

Read with plain JSON so that loading a HF folder does not need ``transformers``. The
names follow transformers' ``VideoMAEConfig``; its defaults fill absent fields (note the
layer-norm eps default of 1e-12, not the reference's 1e-6, and the q/v-bias flag called
``qkv_bias`` in transformers 4.x and ``qv_bias`` in 5.x).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aptune.models.checkpoint_files import CheckpointError, read_json
from aptune.models.checkpoint_io import is_hf_folder

#: transformers' VideoMAEConfig defaults for the fields we read.
HF_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "num_channels": 3,
    "num_frames": 16,
    "tubelet_size": 2,
    "layer_norm_eps": 1e-12,
    "qv_bias": True,
    "hidden_act": "gelu",
    "use_mean_pooling": True,
}


def _square(value: Any, name: str, path: Path) -> int:
    """HF allows ``image_size``/``patch_size`` as [h, w]; our model is square."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"{path}: non-square {name} {list(value)} is not supported")
        value = value[0]
    return int(value)


def _is_classifier(cfg: dict) -> bool:
    archs = cfg.get("architectures") or []
    if archs:
        return any("ForVideoClassification" in a for a in archs)
    return bool(cfg.get("id2label"))


def read_hf_config(folder: str | Path) -> dict[str, Any]:
    """Constructor kwargs (``embed_dim``, ``depth``, ... ``num_classes``) from ``config.json``.

    ``num_classes`` is ``len(id2label)`` for a ``VideoMAEForVideoClassification`` folder
    (and ``class_names`` its labels in index order), else 0: pre-training and bare-encoder
    configs carry a default two-label ``id2label`` that means nothing. Pop ``class_names``
    before passing the dict to ``VisionTransformer``.
    """
    path = Path(folder)
    cfg_file = path / "config.json" if path.is_dir() else path
    raw = read_json(cfg_file)
    if str(raw.get("model_type", "")).lower().startswith("videomaev2"):
        raise CheckpointError(
            f"{cfg_file}: a VideoMAE V2 repository with custom code "
            f"({raw.get('model_type')!r}), not a transformers VideoMAE; pass a .pth of V2's "
            "model zoo instead (docs/checkpoints.md)"
        )
    if raw.get("model_type") == "vjepa2":
        raise CheckpointError(
            f"{cfg_file}: a Hugging Face V-JEPA 2 model; build it with a vjepa2_* model name "
            "(e.g. --model vjepa2_vit_large_patch16_256)"
        )
    if raw.get("model_type", "videomae") != "videomae":
        raise CheckpointError(
            f"{cfg_file}: a Hugging Face {raw.get('model_type')!r} model, not VideoMAE; "
            "aptune loads VideoMAE checkpoints only"
        )
    cfg = {**HF_DEFAULTS, **raw}
    if "qkv_bias" in raw and "qv_bias" not in raw:  # transformers 4.x name
        cfg["qv_bias"] = raw["qkv_bias"]
    if cfg["hidden_act"] not in ("gelu", "gelu_python"):
        raise CheckpointError(
            f"{cfg_file}: hidden_act {cfg['hidden_act']!r} is not supported (VideoMAE uses gelu)"
        )
    dim, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
    out: dict[str, Any] = {
        "embed_dim": dim,
        "depth": layers,
        "num_heads": int(cfg["num_attention_heads"]),
        "mlp_ratio": int(cfg["intermediate_size"]) / dim,
        "img_size": _square(cfg["image_size"], "image_size", cfg_file),
        "patch_size": _square(cfg["patch_size"], "patch_size", cfg_file),
        "in_chans": int(cfg["num_channels"]),
        "num_frames": int(cfg["num_frames"]),
        "tubelet_size": int(cfg["tubelet_size"]),
        "norm_eps": float(cfg["layer_norm_eps"]),
        "qkv_bias": bool(cfg["qv_bias"]),
        "num_classes": 0,
    }
    if _is_classifier(raw):
        if not cfg["use_mean_pooling"]:
            raise CheckpointError(
                f"{cfg_file}: use_mean_pooling=false (first-token pooling) is not supported; "
                "aptune models mean-pool the tokens like VideoMAE"
            )
        id2label = raw.get("id2label") or {}
        out["num_classes"] = len(id2label) or int(raw.get("num_labels", 0))
        if id2label:
            out["class_names"] = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return out


__all__ = ["HF_DEFAULTS", "is_hf_folder", "read_hf_config"]
