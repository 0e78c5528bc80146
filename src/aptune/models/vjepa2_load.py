"""Build a V-JEPA 2 or 2.1 model from the files users have: Meta's ``.pt``, Hugging Face
folders and Hub ids (V-JEPA 2 only: there is no port of 2.1), Meta's attentive-probe files,
aptune's own files.

``build_model`` hands every ``vjepa2_*`` name here (``vjepa2_1_*`` are V-JEPA 2.1). The order
is the VideoMAE path's: read and rename the checkpoint, build the named size (a Hugging Face
``config.json`` decides the architecture), attach the methods, load and verify, then decide
what trains. A file of another kind (a VideoMAE checkpoint, a predictor, an optimizer state,
the other V-JEPA family) is refused with one line naming it and the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from aptune.models.checkpoint_files import CheckpointError, checkpoint_error, read_json
from aptune.models.checkpoint_io import (
    _read_hf_weights,
    load_safetensors_file,
    load_torch_file,
    resolve_checkpoint_path,
)
from aptune.models.sizes import MLP_RATIOS, MODEL_SIZES, full_name, is_vjepa2_1, model_spec
from aptune.models.vjepa2 import VJepa2
from aptune.models.vjepa2_keys import (
    convert_hf,
    convert_meta_2_1,
    convert_probe,
    detect_layout,
    encoder_shape,
    pooler_depth,
    strip_wrappers,
)

log = logging.getLogger("aptune")
#: where Meta's pre-training files keep the encoders: the EMA one first (what Meta evaluates)
DEFAULT_MODEL_KEYS = "target_encoder|encoder|model|module"
#: V-JEPA 2.1: the distilled ViT-B/L files keep theirs under ema_encoder, ViT-g/G under
#: target_encoder
DEFAULT_MODEL_KEYS_2_1 = "ema_encoder|target_encoder|encoder|model|module"
_NOT_ENCODERS = {
    "predictor": "the JEPA predictor, not an encoder",
    "opt": "an optimizer state",
    "optimizer": "an optimizer state",
    "scaler": "a loss-scaler state",
}
_LAYOUT_ERRORS = {
    "videomae": "a VideoMAE checkpoint (position table / q and v biases), not V-JEPA 2; load "
    "it with a vit_* model name",
    "predictor": "holds a V-JEPA 2 predictor but no encoder; pass the pre-training file "
    "with its target_encoder (vitl.pt, vith.pt, vitg.pt, vitg-384.pt)",
    "probe": "an attentive-probe (head) file, not an encoder; pass it as --head_checkpoint "
    "beside the encoder's --finetune",
    "unknown": "no V-JEPA 2 encoder keys (patch_embed.proj, blocks.N.attn.qkv); pass Meta's "
    "vitl.pt / vith.pt / vitg.pt / vitg-384.pt, a Hugging Face V-JEPA 2 folder or Hub id",
}
_LAYOUT_ERRORS_2_1 = {
    **_LAYOUT_ERRORS,
    "predictor": "holds a V-JEPA 2.1 predictor but no encoder; pass the pre-training file "
    "with its ema_encoder / target_encoder (vjepa2_1_vitb_dist_vitG_384.pt, "
    "vjepa2_1_vitl_dist_vitG_384.pt, vjepa2_1_vitg_384.pt, vjepa2_1_vitG_384.pt)",
    "unknown": "no V-JEPA 2.1 encoder keys (video_mod_embed, patch_embed.proj, "
    "blocks.N.attn.qkv); pass Meta's vjepa2_1_vit{b,l}_dist_vitG_384.pt or "
    "vjepa2_1_vit{g,G}_384.pt",
}
#: an example name per family, for a file whose size matches none of the table
_FAMILY_EXAMPLE = {"2": "vjepa2_vit_large_patch16_256", "2.1": "vjepa2_1_vit_large_patch16_384"}


def _family(name: str) -> str:
    return "2.1" if is_vjepa2_1(name) else "2"


def _sizes_of(family: str, shape: tuple[int, int, int]) -> list[str]:
    """Names of ``family`` whose (width, depth, MLP hidden) is ``shape``."""
    return [
        n for n, (dim, depth, _) in MODEL_SIZES.items()
        if n.startswith("vjepa2_") and _family(n) == family and (dim, depth) == shape[:2]
        and round(dim * MLP_RATIOS.get(n, 4.0)) == shape[2]
    ]  # fmt: skip


def _family_error(
    where: str, sd: dict[str, torch.Tensor], family: str, layout: str
) -> CheckpointError:
    """One line for a file of the other V-JEPA family: which it is and the ``--model`` that
    loads it (the matching size where the file has one)."""
    try:
        got = encoder_shape(sd, where)
        match = _sizes_of(family, (got["embed_dim"], got["depth"], got["mlp_hidden"]))
    except CheckpointError:
        match = []
    if match:
        fix = f"--model {match[0]}"
    else:
        prefix = "vjepa2_1_" if family == "2.1" else "vjepa2_"
        fix = f"a {prefix}* name (e.g. --model {_FAMILY_EXAMPLE[family]})"
    if family == "2.1":
        what = "a V-JEPA 2.1 encoder (video_mod_embed), not V-JEPA 2"
    elif layout == "hf":
        what = "a Hugging Face V-JEPA 2 model, not V-JEPA 2.1 (which has no Hugging Face port)"
    else:
        what = "a V-JEPA 2 encoder (no video_mod_embed), not V-JEPA 2.1"
    return checkpoint_error(where, f"{what}; build it with {fix}")


def _select(obj: Any, file: Path, model_key: str, family: str = "2") -> dict[str, torch.Tensor]:
    """The state dict of a Meta ``.pt``: under the first of ``model_key`` present (for a
    V-JEPA 2 name, a V-JEPA 2.1 ``ema_encoder`` too: its keys then name the family)."""
    if not isinstance(obj, dict):
        raise checkpoint_error(file, f"holds a {type(obj).__name__}, not a checkpoint dict")
    for key in model_key.split("|"):
        if key in _NOT_ENCODERS and key in obj:
            use = "ema_encoder, target_encoder" if family == "2.1" else "target_encoder"
            raise checkpoint_error(
                file, f"--model_key {key} is {_NOT_ENCODERS[key]}; use {use} or encoder"
            )
        if key and isinstance(obj.get(key), dict):
            return obj[key]
    if family == "2" and isinstance(obj.get("ema_encoder"), dict):
        return obj["ema_encoder"]
    if "classifiers" in obj:
        raise checkpoint_error(file, _LAYOUT_ERRORS["probe"])
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if "predictor" in obj:
        errors = _LAYOUT_ERRORS_2_1 if family == "2.1" else _LAYOUT_ERRORS
        raise checkpoint_error(file, errors["predictor"])
    top = ", ".join(list(map(str, obj))[:8])
    raise checkpoint_error(
        file, f"no state dict under {model_key!r} (top-level keys: {top}); name it with --model_key"
    )


def read_vjepa2_checkpoint(
    source: str | Path, model_key: str = DEFAULT_MODEL_KEYS, prefix: str = "", family: str = "2"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(our state dict, info) of any V-JEPA 2 (``family="2"``) or 2.1 (``"2.1"``) file,
    folder or Hub id; a file of the other family is one line naming the ``--model``.

    ``info`` has ``file``, ``layout`` (hf | meta | vjepa2.1), ``dropped`` (the HF
    predictor's keys; 2.1's image path and intermediate norms) and, for Hugging Face
    folders, ``hf_config``.
    """
    folder, kind = resolve_checkpoint_path(source)
    info: dict[str, Any] = {"source": str(source), "dropped": []}
    if kind == "hf":
        info["hf_config"] = read_vjepa2_config(folder)
        raw, wfile = _read_hf_weights(folder)
        info["file"] = str(wfile)
    elif kind == "safetensors":
        raw, _ = load_safetensors_file(folder)
        info["file"] = str(folder)
    else:
        raw = _select(load_torch_file(folder), folder, model_key, family)
        info["file"] = str(folder)
    bad = [k for k, v in raw.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise checkpoint_error(info["file"], f"non-tensor entries ({', '.join(bad[:5])})")
    if prefix:
        from aptune.models.convert import select_prefix

        raw = select_prefix(raw, prefix, info["file"])
    raw = strip_wrappers(raw)
    layout = detect_layout(list(raw))
    if layout == "hf":
        sd, info["dropped"] = convert_hf(raw)
    elif layout == "meta":
        sd = raw
    elif layout == "vjepa2.1":
        sd, info["dropped"] = convert_meta_2_1(raw, info["file"])
    else:
        errors = _LAYOUT_ERRORS_2_1 if family == "2.1" else _LAYOUT_ERRORS
        raise checkpoint_error(info["file"], errors[layout])
    if (layout == "vjepa2.1") != (family == "2.1"):
        raise _family_error(info["file"], sd, "2.1" if layout == "vjepa2.1" else "2", layout)
    info["layout"] = layout
    return sd, info


def read_vjepa2_config(folder: Path) -> dict[str, Any]:
    """Constructor keywords from a Hugging Face V-JEPA 2 ``config.json`` (plain JSON: no
    transformers needed), plus ``img_size``, ``num_classes`` and ``class_names``."""
    cfg_file = folder / "config.json"
    cfg = read_json(cfg_file)
    kind = str(cfg.get("model_type", ""))
    if kind != "vjepa2":
        raise checkpoint_error(
            cfg_file,
            f"a Hugging Face {kind!r} model, not V-JEPA 2; load it with a vit_* model name"
            if kind == "videomae"
            else f"a Hugging Face {kind!r} model, not V-JEPA 2",
        )
    if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("qkv_bias", True):
        raise checkpoint_error(cfg_file, "only gelu and a q/k/v bias are supported (V-JEPA 2's)")
    dim, heads = int(cfg.get("hidden_size", 1024)), int(cfg.get("num_attention_heads", 16))
    eps = float(cfg.get("layer_norm_eps", 1e-6))
    out: dict[str, Any] = {
        "embed_dim": dim,
        "depth": int(cfg.get("num_hidden_layers", 24)),
        "num_heads": heads,
        "mlp_ratio": float(cfg.get("mlp_ratio", 4.0)),
        "patch_size": int(cfg.get("patch_size", 16)),
        "tubelet_size": int(cfg.get("tubelet_size", 2)),
        "in_chans": int(cfg.get("in_chans", 3)),
        "norm_eps": eps,
        # transformers' pooler: the encoder's heads and eps, its num_pooler_layers blocks
        "pooler_heads": heads,
        "pooler_eps": eps,
        "pooler_depth": int(cfg.get("num_pooler_layers", 3)),
        "img_size": int(cfg.get("crop_size", 256)),
    }
    archs = cfg.get("architectures") or []
    id2label = cfg.get("id2label") or {}
    if any("ForVideoClassification" in a for a in archs) and id2label:
        out["class_names"] = [str(id2label[k]) for k in sorted(id2label, key=int)]
    return out


def read_probe(source: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """(our ``pooler.*`` + ``head.*`` tensors, file) of a Meta attentive-probe file
    (``{"classifiers": [state_dict, ...]}``; the first classifier is used)."""
    file, kind = resolve_checkpoint_path(source)
    if kind == "safetensors":
        raw: Any = load_safetensors_file(file)[0]
    else:
        obj = load_torch_file(file)
        if isinstance(obj, dict) and isinstance(obj.get("classifiers"), list):
            if not obj["classifiers"]:
                raise checkpoint_error(file, "its classifiers list is empty")
            if len(obj["classifiers"]) > 1:
                log.info("%s holds %d classifiers: using the first", file, len(obj["classifiers"]))
            raw = obj["classifiers"][0]
        else:
            raw = obj
    if not isinstance(raw, dict) or not any(str(k).endswith("query_tokens") for k in raw):
        raise checkpoint_error(
            file, "not an attentive-probe file (no pooler.query_tokens); pass Meta's probe "
            "checkpoint, e.g. the one of its SSv2 or K400 evaluation"
        )  # fmt: skip
    return convert_probe(raw), str(file)


def _summary(keys: list[str]) -> str:
    """``img_mod_embed, patch_embed_img.*, norms_block.0-2.*`` for a list of keys."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        parts = key.split(".")
        if parts[0] == "norms_block" and len(parts) > 2:
            groups.setdefault("norms_block", []).append(parts[1])
        else:
            groups.setdefault(parts[0] + (".*" if len(parts) > 1 else ""), [])
    out = []
    for group, idx in groups.items():
        if group == "norms_block":
            nums = sorted({int(i) for i in idx})
            span = f"{nums[0]}-{nums[-1]}" if len(nums) > 1 else str(nums[0])
            out.append(f"norms_block.{span}.* (intermediate outputs)")
        else:
            out.append(group)
    return ", ".join(out)


def _check_size(name: str, sd: dict[str, torch.Tensor], where: str) -> None:
    """A Meta encoder file must be the named size: one line naming the size it is."""
    got = encoder_shape(sd, where)
    spec = model_spec(name)
    want = (spec["embed_dim"], spec["depth"], round(spec["embed_dim"] * spec["mlp_ratio"]))
    have = (got["embed_dim"], got["depth"], got["mlp_hidden"])
    if want != have:
        family = _family(name)
        match = _sizes_of(family, have)  # type: ignore[arg-type]
        hint = f"; that is --model {match[0]}" if match else ""
        raise CheckpointError(
            f"{where}: a V-JEPA {family} encoder of width {have[0]}, depth {have[1]}, "
            f"MLP {have[2]}, but {full_name(name)} has {want[0]}, {want[1]}, {want[2]}{hint}"
        )


def load_vjepa2_state(
    model: VJepa2, sd: dict[str, torch.Tensor], where: str, method_prefixes: tuple[str, ...]
) -> list[str]:
    """Verify and copy ``sd`` into ``model``; returns the keys that kept their init.

    Expected to be absent: the methods' tensors, the head (``head.*``, a ``pooler.*`` or
    ``fc_norm.*`` the file lacks). A head of another class count is dropped (fresh head);
    an attentive head in the file is not used by ``--head linear``. Anything else that
    differs is one error line.
    """
    from aptune.models.convert import is_method_key

    own = model.state_dict()
    sd = dict(sd)
    for k in [k for k in sd if k.startswith("head.")]:
        if k not in own or own[k].shape != sd[k].shape:
            classes = int(sd.pop(k).shape[0])
            log.info("%s: its %d-class head re-initialised for %d classes (pass --nb_classes "
                     "%d to keep it)", where, classes, model.num_classes, classes)  # fmt: skip
    if model.pooler is None and any(k.startswith("pooler.") for k in sd):
        log.info("%s: its attentive head is not used by --head linear", where)
        sd = {k: v for k, v in sd.items() if not k.startswith("pooler.")}
    has = {p: any(k.startswith(p) for k in sd) for p in ("pooler.", "fc_norm.")}
    missing = sorted(set(own) - set(sd))
    bad_missing = [
        k for k in missing
        if not (is_method_key(k, method_prefixes) or k.startswith("head.")
                or any(k.startswith(p) and not there for p, there in has.items()))
    ]  # fmt: skip
    unexpected = sorted(set(sd) - set(own))
    wrong = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad_missing or unexpected or wrong:
        parts = [
            f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
            for what, keys in (("missing", bad_missing), ("unexpected", unexpected),
                               ("wrong-shape", wrong)) if keys
        ]  # fmt: skip
        raise CheckpointError(f"{where}: does not fit {type(model).__name__}: {', '.join(parts)}")
    model.load_state_dict(sd, strict=False)
    return missing


@dataclass
class VJepa2Sources:
    """What the files given for a V-JEPA 2 model say: its tensors in our names (encoder and
    probe together), constructor keywords they decide, and where they came from."""

    state: dict[str, torch.Tensor] | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    class_names: list[str] | None = None
    input_size: int | None = None


def read_vjepa2_sources(
    name: str,
    checkpoint: str | Path | None,
    head_checkpoint: str | Path | None = None,
    head: str = "attentive",
    model_key: str = "model|module",
    model_prefix: str = "",
    input_size: int | None = None,
) -> VJepa2Sources:
    """Read, rename and check the encoder file and the probe file of a ``vjepa2_*`` model.

    ``model_key`` ``model|module`` (the reference flag's default) means this family's
    default keys; a Hugging Face ``config.json`` decides the architecture and the default
    input size; a Meta file must be the named size.
    """
    if head_checkpoint and head != "attentive":
        raise ValueError("--head_checkpoint is an attentive probe: use it with --head attentive")
    family = _family(name)
    if model_key != "model|module":
        keys = model_key
    else:
        keys = DEFAULT_MODEL_KEYS_2_1 if family == "2.1" else DEFAULT_MODEL_KEYS
    out = VJepa2Sources(input_size=input_size)
    if checkpoint not in ("", None):
        sd, info = read_vjepa2_checkpoint(checkpoint, keys, model_prefix, family)
        out.state, out.where = sd, info["file"]
        if info["layout"] == "vjepa2.1" and info["dropped"]:
            log.info("%s: dropped %d tensors aptune does not use: %s", out.where,
                     len(info["dropped"]), _summary(info["dropped"]))  # fmt: skip
        if "hf_config" in info:
            out.arch = dict(info["hf_config"])
            out.class_names = out.arch.pop("class_names", None)
            crop = out.arch.pop("img_size")
            out.input_size = input_size or crop
            log.info("architecture of %s read from its config.json", checkpoint)
        else:
            _check_size(name, sd, out.where)
    if head_checkpoint:
        probe, probe_file = read_probe(head_checkpoint)
        out.arch.update(pooler_heads=16, pooler_eps=1e-5, pooler_depth=pooler_depth(probe))
        out.state = {**(out.state or {}), **probe}
        out.where = f"{out.where} + {probe_file}" if out.where else probe_file
    return out


__all__ = [
    "DEFAULT_MODEL_KEYS",
    "DEFAULT_MODEL_KEYS_2_1",
    "VJepa2Sources",
    "load_vjepa2_state",
    "read_probe",
    "read_vjepa2_sources",
    "read_vjepa2_checkpoint",
    "read_vjepa2_config",
]
