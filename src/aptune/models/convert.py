"""Checkpoint formats -> our parameter names, verified before anything is copied.

Kept apart from the model (timm's ``checkpoint_filter_fn`` habit): ``convert_state_dict``
renames, ``load_pretrained`` decides which differences are the expected ones (decoder
dropped, fresh head, no fc_norm in a backbone, tuning parameters absent) and refuses every
other difference with a one-line error naming the file, the format and the keys.

Which parameters belong to a tuning method is the tuning registry's knowledge, and this
layer may not import it: callers pass ``method_prefixes`` (``aptune.tuning.
registered_prefixes()``; ``build_model`` does), so a newly registered method is recognised
without a change here. Without them every key is taken for a backbone key.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from aptune.models.checkpoint_files import CheckpointError
from aptune.models.checkpoint_io import read_checkpoint
from aptune.models.hf_keys import convert_hf
from aptune.models.layers import sinusoid_table
from aptune.models.vit import MODEL_SIZES
from aptune.models.vjepa2_keys import is_vjepa2_state

FORMATS = ("videomae-pretrain", "videomae-finetune", "apt-reference", "hf", "hf-pretrain", "aptune")
#: The reference APT file's top-level prompt tensors (ours live under ``kv_prompts.``).
APT_KEYS = ("prompt_embeddings_k", "prompt_embeddings_v", "prompt_scale")
_WRAPPERS = ("module.", "_orig_mod.")
_PRETRAIN_DROP = ("decoder.", "encoder_to_decoder.", "mask_token", "encoder.norm.")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did; ``unexpected`` is empty on success (else it raises)."""

    path: str
    format: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)
    head_reset: bool = False
    file_classes: int | None = None  # classes of a head in the file that did not fit

    def summary(self) -> str:
        """One log line."""
        parts = [f"loaded {self.path} ({self.format})"]
        if self.missing:
            parts.append(f"kept model init for {len(self.missing)} keys ({_preview(self.missing)})")
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} keys ({_preview(self.dropped)})")
        if self.resampled:
            parts.append(f"resampled {', '.join(self.resampled)}")
        if self.head_reset:
            was = f" (the file's has {self.file_classes} classes)" if self.file_classes else ""
            parts.append(f"head re-initialised{was}")
        return "; ".join(parts)


def _preview(keys: list[str], n: int = 3) -> str:
    more = f", ... +{len(keys) - n}" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def is_method_key(key: str, prefixes: tuple[str, ...]) -> bool:
    """True when any dotted segment of ``key`` starts with one of ``prefixes``.

    The one name test behind both trainable selection (``tuning``) and checkpoint
    filtering (here): a method's parameters carry its prefix wherever they hang.
    """
    return any(part.startswith(prefixes) for part in key.split("."))


# -- renaming ------------------------------------------------------------------------------
def _detect(keys: list[str], where: str, method_prefixes: tuple[str, ...]) -> str:
    def has(*prefixes: str) -> bool:
        return any(k.startswith(prefixes) for k in keys)

    if has("videomae.", "embeddings.patch_embeddings.", "encoder.layer."):
        return "hf-pretrain" if has("decoder.", "encoder_to_decoder.", "mask_token") else "hf"
    if has("encoder.patch_embed.", "encoder.blocks."):
        return "videomae-pretrain"
    if has("head_norm.", *APT_KEYS):
        return "apt-reference"
    if has("kv_prompts.", "seq_prompts.") or any(is_method_key(k, method_prefixes) for k in keys):
        return "aptune"
    if has("patch_embed.proj.", "blocks."):
        return "videomae-finetune"
    raise CheckpointError(
        f"{where}: not a VideoMAE-style checkpoint (first keys: {_preview(sorted(keys), 4)})"
    )


def _strip_common(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes on every key - DDP's ``module.`` and torch.compile's
    ``_orig_mod.``, nested in either order - and mmaction's ``backbone.`` per key."""
    while raw:
        wrapper = next((w for w in _WRAPPERS if all(k.startswith(w) for k in raw)), None)
        if wrapper is None:
            break
        raw = {k[len(wrapper) :]: v for k, v in raw.items()}
    return {k.removeprefix("backbone."): v for k, v in raw.items()}


def select_prefix(raw: dict[str, torch.Tensor], prefix: str, where: str) -> dict[str, torch.Tensor]:
    """``--model_prefix``: the keys under ``prefix``, with it removed; others are left out.

    The reference matches the model's names with the prefix put in front, so keys outside
    it never load; none under it at all is an error instead of a silently fresh model.
    """
    if not prefix:
        return raw
    out = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    if not out:
        raise CheckpointError(
            f"{where}: no key starts with --model_prefix {prefix!r} (first keys: "
            f"{_preview(sorted(raw), 4)}); pass the prefix these keys have, or none"
        )
    return out


def uses_cos_attn(raw: dict[str, torch.Tensor]) -> bool:
    """True for a VideoMAE V2 checkpoint with cosine attention (``blocks.N.attn.scale``)."""
    return any(k.endswith("attn.scale") for k in raw)


def _convert(
    raw: dict[str, torch.Tensor], where: str, method_prefixes: tuple[str, ...]
) -> tuple[dict, str, list[str]]:
    """(our state dict, format, dropped original keys)."""
    raw = _strip_common(raw)
    if is_vjepa2_state(raw):
        raise CheckpointError(
            f"{where}: a V-JEPA 2 checkpoint; build it with a vjepa2_* model name "
            "(e.g. --model vjepa2_vit_large_patch16_256)"
        )
    fmt = _detect(list(raw), where, method_prefixes)
    if fmt.startswith("hf"):
        out, dropped = convert_hf(raw, where)
        return out, fmt, dropped
    out, dropped = {}, []
    for key, value in raw.items():
        if fmt == "videomae-pretrain" and key.startswith(_PRETRAIN_DROP):
            dropped.append(key)
        elif fmt == "videomae-pretrain":
            out[key.removeprefix("encoder.")] = value
        elif fmt == "apt-reference" and key in APT_KEYS:
            out[f"kv_prompts.{key}"] = value
        elif fmt == "apt-reference" and key.startswith("head_norm."):
            out["fc_norm." + key.removeprefix("head_norm.")] = value
        else:
            out[key] = value
    return out, fmt, dropped


def convert_state_dict(
    raw: dict[str, torch.Tensor],
    path_for_errors: str = "",
    method_prefixes: tuple[str, ...] = (),
) -> tuple[dict[str, torch.Tensor], str]:
    """Rename any supported layout to our keys -> (state dict, format name).

    ``method_prefixes`` only names the format: our own layout with method tensors is
    ``aptune``, without them ``videomae-finetune`` (the keys are the same either way).
    """
    out, fmt, _ = _convert(raw, path_for_errors or "<state dict>", method_prefixes)
    return out, fmt


# -- position table ------------------------------------------------------------------------
def resample_pos_embed(
    table: torch.Tensor, old_grid: tuple[int, int, int], new_grid: tuple[int, int, int]
) -> torch.Tensor:
    """Resample a (1, N, D) or (N, D) table over a (t, h, w) token grid.

    Bicubic over (h, w) for every time slice (as VideoMAE's fine-tuning code does), then
    linear over time when the number of time slices differs.
    """
    (t0, h0, w0), (t1, h1, w1) = old_grid, new_grid
    if table.shape[-2] != t0 * h0 * w0:
        raise ValueError(
            f"table has {table.shape[-2]} positions, grid {old_grid} needs {t0 * h0 * w0}"
        )
    D, dtype = table.shape[-1], table.dtype
    x = table.reshape(t0, h0, w0, D).float().permute(0, 3, 1, 2)  # (t, D, h, w)
    if (h0, w0) != (h1, w1):
        x = F.interpolate(x, size=(h1, w1), mode="bicubic", align_corners=False)
    if t0 != t1:
        x = x.permute(2, 3, 1, 0).reshape(h1 * w1, D, t0)  # (h*w, D, t)
        x = F.interpolate(x, size=t1, mode="linear", align_corners=False)
        x = x.reshape(h1, w1, D, t1).permute(3, 2, 0, 1)  # (t, D, h, w)
    out = x.permute(0, 2, 3, 1).reshape(t1 * h1 * w1, D).to(dtype)  # (N', D)
    return out.unsqueeze(0) if table.ndim == 3 else out


def _old_grid(n: int, new: tuple[int, int, int], patch: int, args: dict, where: str) -> tuple:
    """Token grid of a stored table: from the file's training args, else assume the same
    frame count (other input size), else the same input size (other frame count)."""
    if args.get("num_frames") and args.get("input_size"):
        g = (args["num_frames"] // args.get("tubelet_size", 2),) + (
            args["input_size"] // patch,
        ) * 2
        if math.prod(g) == n:
            return g
    side = math.isqrt(n // new[0]) if n % new[0] == 0 else 0
    if side * side * new[0] == n:
        return (new[0], side, side)
    if n % (new[1] * new[2]) == 0:
        return (n // (new[1] * new[2]), new[1], new[2])
    raise CheckpointError(f"{where}: cannot tell the token grid of its pos_embed ({n} positions)")


def _load_pos_embed(model: nn.Module, sd: dict, report: LoadReport, info: dict) -> None:
    """Use a stored table only if it differs from the model's fixed sinusoid table."""
    table = sd.pop("pos_embed", None)
    own = getattr(model, "pos_embed", None)
    if table is None:
        return
    if own is None:
        raise CheckpointError(f"{report.path}: has a pos_embed but the model has none")
    table = table.reshape(1, -1, table.shape[-1]).float()  # (1, N, D)
    n, d = table.shape[1:]
    if d != own.shape[-1] or n == own.shape[1] + 1:
        raise CheckpointError(
            f"{report.path}: pos_embed of shape {tuple(table.shape)} does not fit the model "
            f"({tuple(own.shape)}); a class-token or different-width model?"
        )
    if n == own.shape[1] and torch.allclose(table, own, atol=1e-5):
        report.dropped.append("pos_embed")  # the same fixed table we already have
        return
    if n != own.shape[1]:
        if torch.allclose(table, sinusoid_table(n, d), atol=1e-5):
            report.dropped.append("pos_embed")  # fixed table of the old grid: ours is exact
            return
        pe = model.patch_embed
        old = _old_grid(n, pe.grid, pe.patch_size, info.get("args") or {}, report.path)
        table = resample_pos_embed(table, old, pe.grid)
    with torch.no_grad():
        own.copy_(table)
    report.resampled.append("pos_embed")


# -- verification --------------------------------------------------------------------------
def _check_architecture(model: nn.Module, sd: dict, where: str) -> None:
    w = sd.get("patch_embed.proj.weight")
    ref = model.state_dict().get("patch_embed.proj.weight")
    if w is None or ref is None:
        return
    if w.ndim != 5:
        raise CheckpointError(
            f"{where}: holds a 2-D image model (patch_embed.proj.weight is {w.ndim}-D "
            f"{tuple(w.shape)}); aptune needs a video checkpoint (5-D Conv3d tubelet embedding)"
        )
    if w.shape[0] != ref.shape[0]:
        names = [n for n, s in MODEL_SIZES.items() if s[0] == w.shape[0]]
        raise CheckpointError(
            f"{where}: embed dim {w.shape[0]} but the model has {ref.shape[0]}; choose the "
            f"matching model ({', '.join(names) or 'no named size has it'})"
        )
    if w.shape[1:] != ref.shape[1:]:
        raise CheckpointError(
            f"{where}: tubelet embedding {tuple(w.shape[1:])} (channels, t, p, p) but the model "
            f"has {tuple(ref.shape[1:])}; set --tubelet_size / patch size to match"
        )


def _prompt_error(where: str, sd: dict, own: dict, model: nn.Module) -> CheckpointError | None:
    k = "kv_prompts.prompt_embeddings_k"
    has_s, want_s = "kv_prompts.prompt_scale" in sd, "kv_prompts.prompt_scale" in own
    if k not in sd:
        return None
    L, T, d = sd[k].shape  # (L, num_tokens, head_dim)
    flags = (
        f"--transfer_type prompt --prompt_num_tokens {T} and --prompt_start/--prompt_end "
        f"spanning {L} layers (e.g. --prompt_start 0 --prompt_end {L - 1})"
    )
    if k not in own:
        return CheckpointError(f"{where}: holds APT prompts ({L} layers x {T} tokens); use {flags}")
    if own[k].shape != sd[k].shape:
        L2, T2, _ = own[k].shape
        start = getattr(model.kv_prompts, "first_block", None)
        at = f" from block {start}" if start is not None else ""
        return CheckpointError(
            f"{where}: prompts are {L} layers x {T} tokens x {d}, the model has {L2} layers{at} "
            f"x {T2} tokens; use {flags}"
        )
    if has_s != want_s:
        flag = "--prompt_reparam" if has_s else "no --prompt_reparam"
        return CheckpointError(
            f"{where}: prompts were trained with{'' if has_s else 'out'} "
            f"reparameterisation (prompt_scale); build the model with {flag}"
        )
    return None


def _hints(
    sd: dict, own: dict, missing: list[str], unexpected: list[str], method_prefixes: tuple
) -> str:
    def depth(keys: Any) -> int:
        return 1 + max(
            (int(m.group(1)) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1
        )

    hints = []
    if depth(sd) != depth(own):
        hints.append(f"file has {depth(sd)} blocks, the model {depth(own)}: pick the matching size")
    if any(".gamma_" in k for k in unexpected):
        hints.append("file uses layer scale (gamma_1/gamma_2): build with init_values")
    if any(".gamma_" in k for k in missing):
        hints.append("model has layer scale the file lacks: build without init_values")
    if any(k.endswith(".attn.scale") for k in unexpected):
        hints.append("file uses cosine attention (attn.scale): build with --cos_attn")
    if any(k.endswith(".attn.scale") for k in missing):
        hints.append("model has cosine attention the file lacks: build without --cos_attn")
    if any(k.endswith(".q_bias") for k in missing) and not any(k.endswith(".q_bias") for k in sd):
        hints.append("file has no q/v bias: build with qkv_bias=False")
    if missing and not method_prefixes:
        hints.append(
            "a tuning method's keys? pass method_prefixes=aptune.tuning.registered_prefixes()"
        )
    return ("; " + "; ".join(hints)) if hints else ""


def attached_prefixes(model: nn.Module) -> tuple[str, ...]:
    """The parameter prefixes of the tuning methods attached to ``model``."""
    configs = getattr(model, "tuning_configs", ())
    return tuple(p for cfg in configs for p in cfg.param_prefixes)


def load_pretrained(
    model: nn.Module,
    path: str | Path,
    model_key: str = "model|module",
    method_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """Read, convert, verify and copy a checkpoint into ``model``; see docs/checkpoints.md.

    ``method_prefixes`` name the tuning methods' parameters, which a backbone file lacks
    and which then keep their init; by default, those of the methods attached to ``model``
    (``model.tuning_configs``). ``aptune.build_model`` passes every registered method's.
    """
    raw, info = read_checkpoint(path, model_key)
    return load_state(model, raw, info, method_prefixes)


def load_state(
    model: nn.Module,
    raw: dict[str, torch.Tensor],
    info: dict,
    method_prefixes: tuple[str, ...] = (),
) -> LoadReport:
    """``load_pretrained`` for a state dict already read by ``read_checkpoint`` (so a caller
    that looked at the keys first - e.g. for cos_attn - does not read a big file twice)."""
    where = info["file"]
    method_prefixes = method_prefixes or attached_prefixes(model)
    sd, fmt, dropped = _convert(raw, where, method_prefixes)
    if fmt == "videomae-finetune" and info.get("metadata", {}).get("format") == "aptune":
        fmt = "aptune"
    report = LoadReport(path=where, format=fmt, dropped=dropped)
    _check_architecture(model, sd, where)
    _load_pos_embed(model, sd, report, info)
    own = model.state_dict()
    backbone_only = not any(k.startswith(("head.", "fc_norm.")) for k in sd)
    for k in [k for k in sd if k.startswith("head.")]:
        if k not in own or own[k].shape != sd[k].shape:
            report.dropped.append(k)
            report.file_classes = int(sd.pop(k).shape[0])
    err = _prompt_error(where, sd, own, model)
    if err is not None:
        raise err
    missing = sorted(set(own) - set(sd))
    expected = [
        k
        for k in missing
        if is_method_key(k, method_prefixes)
        or k.startswith("head.")
        or (backbone_only and k.startswith("fc_norm."))
    ]
    bad_missing = [k for k in missing if k not in expected]
    unexpected = sorted(set(sd) - set(own))
    wrong_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if bad_missing or unexpected or wrong_shape:
        parts = [
            f"{len(x)} {what} ({_preview(x)})"
            for what, x in (
                ("missing", bad_missing),
                ("unexpected", unexpected),
                ("wrong-shape", wrong_shape),
            )
            if x
        ]
        raise CheckpointError(
            f"{where}: does not fit the model (guessed format {fmt}): {', '.join(parts)}"
            + _hints(sd, own, bad_missing, unexpected, method_prefixes)
        )
    result = model.load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == missing and not result.unexpected_keys, result
    report.missing = missing
    report.head_reset = any(k.startswith("head.") for k in missing)
    return report


__all__ = [
    "FORMATS",
    "LoadReport",
    "convert_state_dict",
    "is_method_key",
    "load_pretrained",
    "load_state",
    "resample_pos_embed",
    "uses_cos_attn",
]
