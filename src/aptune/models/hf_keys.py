"""Hugging Face VideoMAE state-dict keys -> ours (``videomae.encoder.layer.N.*`` -> ``blocks.N.*``).

Separate q/k/v linears are concatenated into our ``qkv`` (q, k, v order), the q/v biases
kept under both of transformers' names, the always-zero key bias dropped, and
pre-training parts (decoder, mask token) dropped.
"""

from __future__ import annotations

import re

import torch

from aptune.models.checkpoint_files import CheckpointError

_HF_LAYER = (  # HF layer sub-module -> ours (checked in order)
    ("attention.output.dense.", "attn.proj."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
)


def convert_hf(raw: dict[str, torch.Tensor], where: str) -> tuple[dict, list[str]]:
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        name = key.removeprefix("videomae.")
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)", name)
        if name.startswith(("decoder.", "encoder_to_decoder.")) or name == "mask_token":
            dropped.append(key)
        elif name.startswith("layernorm."):  # final norm of non-mean-pooling encoders
            dropped.append(key)
        elif name.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + name.rsplit(".", 1)[1]] = value
        elif m and m.group(2).startswith("attention.attention."):
            qkv.setdefault(m.group(1), {})[m.group(2).removeprefix("attention.attention.")] = value
        elif m:
            i, rest = m.groups()
            new = next(
                (ours + rest[len(hf) :] for hf, ours in _HF_LAYER if rest.startswith(hf)), None
            )
            out[f"blocks.{i}.{new}" if new else key] = value
        elif name.startswith("classifier."):
            out["head." + name.removeprefix("classifier.")] = value
        else:  # fc_norm.* keeps its name; anything else surfaces as unexpected
            out[name if name.startswith("fc_norm.") else key] = value
    for i, parts in qkv.items():
        try:
            w = [parts.pop(f"{p}.weight") for p in ("query", "key", "value")]
        except KeyError as e:
            raise CheckpointError(f"{where}: layer {i} lacks attention weight {e}") from None
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(w, dim=0)  # (3D, D), q,k,v order
        # transformers 4.x (and the files 5.x writes) name them q_bias/v_bias
        for hf, ours in (
            ("query.bias", "q_bias"),
            ("q_bias", "q_bias"),
            ("value.bias", "v_bias"),
            ("v_bias", "v_bias"),
        ):
            if hf in parts:
                out[f"blocks.{i}.attn.{ours}"] = parts.pop(hf)
        kb = parts.pop("key.bias", None)
        if kb is not None and kb.abs().max() > 0:
            raise CheckpointError(f"{where}: layer {i} has a non-zero key bias; VideoMAE has none")
        if kb is not None:
            dropped.append(f"videomae.encoder.layer.{i}.attention.attention.key.bias")
        for rest in parts:  # unknown attention tensors: let the key check name them
            out[f"videomae.encoder.layer.{i}.attention.attention.{rest}"] = parts[rest]
    has_head = any(k.startswith("head.") for k in out)
    if has_head and "fc_norm.weight" not in out and any(".layernorm." in f".{k}" for k in dropped):
        raise CheckpointError(
            f"{where}: classifier uses first-token pooling (use_mean_pooling=false); "
            "aptune models mean-pool the tokens like VideoMAE"
        )
    return out, dropped


__all__ = ["convert_hf"]
