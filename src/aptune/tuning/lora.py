"""LoRA (Hu et al., arXiv 2106.09685): low-rank updates of frozen linear projections.

    W x  ->  W x + (alpha / r) * B A dropout(x),   A: (r, in), B: (out, r)

A is kaiming-uniform, B zero, so an untrained LoRA model computes exactly the backbone's
function. Targets (``--lora_targets``): ``qv`` (default, the paper's choice) and ``qkv``
update the query/key/value thirds of the fused ``attn.qkv`` through the
``Attention.qkv_delta`` hook, each third with its own A, B; ``all`` adds ``attn.proj``,
``mlp.fc1`` and ``mlp.fc2`` through a forward hook on those ``nn.Linear`` modules (their
weights keep their names, so backbone checkpoints load unchanged). ``merge_lora`` folds
``scale * B @ A`` into the weights for inference and removes every LoRA module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from aptune.models.vit import VisionTransformer
from aptune.tuning.base import MethodConfig, require

#: --lora_targets -> (parts of the fused qkv, other linear layers of each block)
TARGETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "qv": ("qv", ()),
    "qkv": ("qkv", ()),
    "all": ("qkv", ("attn.proj", "mlp.fc1", "mlp.fc2")),
}


class LoRA(nn.Module):
    """``scale * B(A(dropout(x)))``: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, p: float):
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear (and peft)
        self.dropout = nn.Dropout(p) if p > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling  # (out, in)

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


class QkvLoRA(nn.Module):
    """``Attention.qkv_delta``: (B, N, D) -> (B, N, 3D), zeros for the parts not targeted."""

    def __init__(self, dim: int, parts: str, rank: int, alpha: float, p: float) -> None:
        super().__init__()
        self.dim, self.parts = dim, parts
        self.lora = nn.ModuleDict({c: LoRA(dim, dim, rank, alpha, p) for c in parts})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        zeros = None
        out = []
        for c in "qkv":
            if c in self.lora:
                out.append(self.lora[c](x))  # (B, N, D)
            else:
                zeros = x.new_zeros(x.shape[:-1] + (self.dim,)) if zeros is None else zeros
                out.append(zeros)
        return torch.cat(out, dim=-1)  # (B, N, 3D)

    def delta_weight(self) -> torch.Tensor:
        """(3D, D): the update of the fused qkv weight."""
        w = self.lora[self.parts[0]].lora_A
        rows = [
            self.lora[c].delta_weight() if c in self.lora else w.new_zeros(self.dim, self.dim)
            for c in "qkv"
        ]
        return torch.cat(rows, dim=0)


def _lora_hook(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor):
    """Forward hook of a targeted ``nn.Linear``: adds its ``lora`` child's update."""
    lora = module._modules.get("lora")
    return output if lora is None else output + lora(args[0])


def _add_linear_lora(linear: nn.Linear, rank: int, alpha: float, p: float) -> None:
    require(not hasattr(linear, "lora"), "this layer already has a LoRA update")
    linear.lora = LoRA(linear.in_features, linear.out_features, rank, alpha, p)
    linear.register_forward_hook(_lora_hook)


@torch.no_grad()
def merge_lora(model: VisionTransformer) -> int:
    """Fold every LoRA update into its frozen weight and remove it; returns how many.

    The merged model computes the same function (up to float rounding) with no extra cost
    at inference, and its state dict is a plain backbone one.
    """
    merged = 0
    for blk in model.blocks:
        attn = blk.attn
        if isinstance(attn.qkv_delta, QkvLoRA):
            w = attn.qkv.weight
            w.add_(attn.qkv_delta.delta_weight().to(w.dtype))
            attn.qkv_delta = None
            merged += 1
        for name in ("attn.proj", "mlp.fc1", "mlp.fc2"):
            linear = blk.get_submodule(name)
            lora = linear._modules.get("lora")
            if lora is None:
                continue
            linear.weight.add_(lora.delta_weight().to(linear.weight.dtype))
            del linear.lora
            for key, hook in list(linear._forward_hooks.items()):
                if hook is _lora_hook:
                    del linear._forward_hooks[key]
            merged += 1
    return merged


@dataclass
class LoraConfig(MethodConfig):
    """``--transfer_type lora``: ``--lora_rank``, ``--lora_alpha``, ``--lora_targets`` ..."""

    name: ClassVar[str] = "lora"
    param_prefixes: ClassVar[tuple[str, ...]] = ("lora_",)

    rank: int = 8
    alpha: float = 16.0
    targets: str = "qv"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(
            isinstance(self.rank, int) and self.rank >= 1,
            f"--lora_rank must be an integer >= 1, got {self.rank!r}",
        )
        require(self.alpha > 0, f"--lora_alpha must be > 0, got {self.alpha}")
        require(
            self.targets in TARGETS,
            f"--lora_targets must be one of {', '.join(TARGETS)}, got {self.targets!r}",
        )
        require(0.0 <= self.dropout < 1.0, f"--lora_dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def flag_prefix(cls) -> str:
        return "lora_"

    def attach(self, model: VisionTransformer) -> None:
        parts, others = TARGETS[self.targets]
        args = (self.rank, self.alpha, self.dropout)
        for blk in model.blocks:
            require(blk.attn.qkv_delta is None, "the attention already has a qkv update")
            blk.attn.qkv_delta = QkvLoRA(model.embed_dim, parts, *args)
            for name in others:
                _add_linear_lora(blk.get_submodule(name), *args)
