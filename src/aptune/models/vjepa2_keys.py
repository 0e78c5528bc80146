"""V-JEPA 2 checkpoint layouts -> aptune's parameter names, and which layout a dict is.

aptune's names are those of Meta's encoder files without ``module.backbone.`` (encoder)
and of Meta's probe files without ``module.`` (``pooler.*``; their ``linear`` is our
``head``). Hugging Face's port splits q, k and v (fused here, in q, k, v order) and renames
the rest; its predictor is dropped (a classifier needs only the encoder). Meta's V-JEPA 2.1
encoders keep ``video_mod_embed`` as is; their last hierarchical norm
(``norms_block.<last>``) becomes ``norm``, the other ``norms_block.*`` and the image path
(``img_mod_embed``, ``patch_embed_img.*``) are dropped.
"""

from __future__ import annotations

import re

import torch

from aptune.models.checkpoint_files import CheckpointError

_WRAPPERS = ("module.", "backbone.", "_orig_mod.")
#: Hugging Face names -> ours, applied in order to each key's prefix or infix
_HF_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.embeddings.patch_embeddings.proj.", "patch_embed.proj."),
    ("encoder.layernorm.", "norm."),
    ("encoder.layer.", "blocks."),
    (".attention.proj.", ".attn.proj."),
    ("pooler.self_attention_layers.", "pooler.blocks."),
    ("pooler.cross_attention_layer.", "pooler.cross_attention_block."),
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
    (".self_attn.out_proj.", ".attn.proj."),
    (".cross_attn.q_proj.", ".xattn.q."),
    ("classifier.", "head."),
)
#: fused projections: (our name, the HF names fused into it in order, HF's module)
_HF_FUSED = (
    ("attn.qkv", ("query", "key", "value"), "attention"),
    ("attn.qkv", ("q_proj", "k_proj", "v_proj"), "self_attn"),
    ("xattn.kv", ("k_proj", "v_proj"), "cross_attn"),
)


def strip_wrappers(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP's ``module.``, Meta's ``backbone.`` and torch.compile's prefixes."""
    out = {}
    for key, value in raw.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPERS:
                if key.startswith(prefix):
                    key, changed = key[len(prefix) :], True
        out[key] = value
    return out


def is_vjepa2_state(raw: dict[str, torch.Tensor]) -> bool:
    """A V-JEPA 2 (or 2.1) state dict, whatever its wrappers: Hugging Face's ``vjepa2.``
    keys, or a video tubelet embedding with one bias over q, k and v (VideoMAE has q_bias
    and v_bias; an image ViT a 4-D embedding) and no position table (rotary positions).
    What the VideoMAE loader asks before refusing such a file with one line."""
    if any(k.startswith("vjepa2.") for k in raw):
        return True
    embed = [v for k, v in raw.items() if k.endswith("patch_embed.proj.weight")]
    return (
        bool(embed) and embed[0].ndim == 5
        and any(k.endswith("blocks.0.attn.qkv.bias") for k in raw)
        and not any(k.endswith("pos_embed") for k in raw)
    )  # fmt: skip


def detect_layout(keys: list[str]) -> str:
    """``hf`` | ``meta`` (Meta's encoder, or aptune's own file) | ``probe`` (head only) |
    ``predictor`` | ``vjepa2.1`` | ``videomae`` | ``unknown``."""
    joined = set(keys)
    if any(k.startswith(("vjepa2.encoder.", "encoder.layer.")) for k in keys):
        return "hf"
    if any("video_mod_embed" in k for k in keys):
        return "vjepa2.1"
    if any(k.endswith(("attn.q_bias", "attn.v_bias")) for k in keys) or "pos_embed" in joined:
        return "videomae"
    if any(k.startswith("blocks.") for k in keys) and "patch_embed.proj.weight" in joined:
        return "meta"
    if any(k.startswith(("predictor_blocks.", "predictor_embed.", "mask_tokens")) for k in keys):
        return "predictor"
    if any(k.startswith("pooler.") for k in keys):
        return "probe"
    return "unknown"


def convert_hf(raw: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A ``VJEPA2Model`` / ``VJEPA2ForVideoClassification`` state dict -> (ours, dropped)."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    # (fused key, its HF part names in order) -> {part name: tensor}
    parts: dict[tuple[str, tuple[str, ...]], dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        key = key.removeprefix("vjepa2.")
        if key.startswith("predictor."):
            dropped.append(key)
            continue
        for old, new in _HF_RENAMES:
            if old.startswith("."):
                key = key.replace(old, new, 1)
            elif key.startswith(old):
                key = new + key[len(old) :]
        fused = _fused_part(key)
        if fused is None:
            out[key] = value
        else:
            target, names, name = fused
            parts.setdefault((target, names), {})[name] = value
    for (target, names), got in parts.items():
        if set(got) != set(names):
            raise CheckpointError(f"{target}: the file has {sorted(got)} of {list(names)}")
        out[target] = torch.cat([got[n] for n in names])
    return out, dropped


_FUSED_RE = re.compile(
    r"^(?P<owner>.+)\.(?P<module>attention|self_attn|cross_attn)\.(?P<name>\w+)\.(?P<kind>weight|bias)$"
)


def _fused_part(key: str) -> tuple[str, tuple[str, ...], str] | None:
    """(our fused key, the HF part names fused into it, this key's part) or None."""
    m = _FUSED_RE.match(key)
    if m is None:
        return None
    for target, names, module in _HF_FUSED:
        if m["module"] == module and m["name"] in names:
            return f"{m['owner']}.{target}.{m['kind']}", names, m["name"]
    return None


_NORMS_BLOCK_RE = re.compile(r"^norms_block\.(\d+)\.")
#: V-JEPA 2.1's image path: aptune is video only
_IMAGE_PATH = ("img_mod_embed", "patch_embed_img.")


def convert_meta_2_1(
    raw: dict[str, torch.Tensor], where: str = "V-JEPA 2.1 encoder"
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A V-JEPA 2.1 encoder (wrappers stripped) -> (ours, dropped keys).

    The encoder's output is its last hierarchical norm applied to the last block's tokens:
    ``norms_block.<highest index present>.*`` -> ``norm.*``; the lower ``norms_block.*``
    (intermediate outputs) and the image path are dropped. A dict without ``norms_block``
    (aptune's own 2.1 file) passes through.
    """
    indices = {int(m[1]) for k in raw if (m := _NORMS_BLOCK_RE.match(k))}
    last = max(indices) if indices else None
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        m = _NORMS_BLOCK_RE.match(key)
        if m is not None:
            if int(m[1]) == last:
                out["norm." + key[m.end() :]] = value
            else:
                dropped.append(key)
        elif key.startswith(_IMAGE_PATH):
            dropped.append(key)
        else:
            out[key] = value
    if last is not None and any(k.startswith("norm.") for k in raw):
        raise CheckpointError(f"{where}: both norm.* and norms_block.* (which is the final norm?)")
    return out, dropped


def convert_probe(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Meta attentive-probe state dict (``module.pooler.*``, ``module.linear.*``) -> ours."""
    out = {}
    for key, value in strip_wrappers(raw).items():
        out["head." + key.removeprefix("linear.") if key.startswith("linear.") else key] = value
    return out


def pooler_depth(sd: dict[str, torch.Tensor]) -> int:
    """Self-attention blocks of the pooler in a state dict (Meta's probes: 3)."""
    found = {int(m[1]) for k in sd if (m := re.match(r"pooler\.blocks\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def encoder_shape(sd: dict[str, torch.Tensor], where: str) -> dict[str, int | float]:
    """Width, depth, MLP ratio, patch and tubelet of an encoder state dict in our names."""
    try:
        w = sd["patch_embed.proj.weight"]  # (D, 3, tubelet, patch, patch)
        fc1 = sd["blocks.0.mlp.fc1.weight"]  # (hidden, D)
    except KeyError as e:
        raise CheckpointError(f"{where}: no V-JEPA 2 encoder in it (missing {e.args[0]})") from None
    depth = 1 + max(int(m[1]) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k)))
    return {
        "embed_dim": int(w.shape[0]),
        "depth": depth,
        "mlp_hidden": int(fc1.shape[0]),
        "tubelet_size": int(w.shape[2]),
        "patch_size": int(w.shape[3]),
        "in_chans": int(w.shape[1]),
    }


__all__ = [
    "convert_hf",
    "convert_meta_2_1",
    "convert_probe",
    "detect_layout",
    "encoder_shape",
    "is_vjepa2_state",
    "pooler_depth",
    "strip_wrappers",
]
