"""Visual Prompt Tuning (VPT, arXiv 2203.12119): learnable tokens in the token sequence.

Unlike APT, the prompts are real tokens: they are prepended to the sequence, attend and
are attended to, and pass through the MLPs, so every block processes ``P + N`` tokens and
the cost grows with ``P``. ``vpt_shallow`` prepends ``P`` tokens once before block 0 and
lets them flow through; ``vpt_deep`` prepends new prompts before block 0 and, before every
later block, replaces the previous block's prompt outputs with that layer's own prompts.
Prompts are dropped before mean pooling, so the head sees the data tokens only (VPT keeps
the class token instead; VideoMAE has none).

Prompts carry no position embedding (they are inserted after it, as in VPT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from aptune.models.vit import VisionTransformer
from aptune.tuning.base import MethodConfig, require


class SequencePrompts(nn.Module):
    """Prompt tokens for ``VisionTransformer.seq_prompts``: ``insert`` before a block, ``drop``.

    ``vpt_prompts`` has shape (L, P, D): L = 1 (shallow) or depth (deep).
    """

    def __init__(
        self,
        num_layers: int,
        num_tokens: int,
        dim: int,
        dropout: float,
        patch_size: int = 16,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_layers, self.num_tokens = num_layers, num_tokens
        self.first_block = 0  # prompts enter at block 0: autograd is needed from there on
        # VPT's init: uniform(-v, v), v = sqrt(6 / (3*16*16 + D)) - xavier over a patch
        bound = math.sqrt(6.0 / float(in_chans * patch_size * patch_size + dim))
        self.vpt_prompts = nn.Parameter(torch.empty(num_layers, num_tokens, dim))
        nn.init.uniform_(self.vpt_prompts, -bound, bound)
        self.dropout = nn.Dropout(dropout)

    def insert(self, x: torch.Tensor, block_index: int) -> torch.Tensor:
        """Before block ``block_index``: prepend (block 0) or replace (deep, later blocks)."""
        if block_index >= self.num_layers:
            return x  # shallow: the prompts from block 0 flow on
        B = x.shape[0]
        p = self.dropout(self.vpt_prompts[block_index]).to(x.dtype)  # (P, D)
        p = p.unsqueeze(0).expand(B, -1, -1)  # (B, P, D)
        if block_index > 0:
            x = x[:, self.num_tokens :]  # (B, N, D): drop the previous layer's prompt outputs
        return torch.cat((p, x), dim=1)  # (B, P + N, D)

    def drop(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, D) -> (B, N, D): pooling and head see data tokens only."""
        return x[:, self.num_tokens :]

    def extra_repr(self) -> str:
        kind = "deep" if self.num_layers > 1 else "shallow"
        return f"{kind}, num_tokens={self.num_tokens}"


@dataclass
class VptConfig(MethodConfig):
    """``--transfer_type vpt_shallow``: flags ``--vpt_num_tokens``, ``--vpt_dropout``."""

    name: ClassVar[str] = "vpt_shallow"
    param_prefixes: ClassVar[tuple[str, ...]] = ("vpt_",)
    deep: ClassVar[bool] = False

    num_tokens: int = 8
    dropout: float = 0.0

    def __post_init__(self) -> None:
        require(
            isinstance(self.num_tokens, int) and self.num_tokens >= 1,
            f"--vpt_num_tokens must be an integer >= 1, got {self.num_tokens!r}",
        )
        require(0.0 <= self.dropout < 1.0, f"--vpt_dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def flag_prefix(cls) -> str:
        return "vpt_"

    def attach(self, model: VisionTransformer) -> None:
        require(
            model.seq_prompts is None,
            f"{self.name}: the model already has sequence prompts; use one VPT variant",
        )
        model.seq_prompts = SequencePrompts(
            num_layers=model.depth if self.deep else 1,
            num_tokens=self.num_tokens,
            dim=model.embed_dim,
            dropout=self.dropout,
            patch_size=model.patch_embed.patch_size,
        )


@dataclass
class VptDeepConfig(VptConfig):
    """``--transfer_type vpt_deep``: new prompts before every block."""

    name: ClassVar[str] = "vpt_deep"
    deep: ClassVar[bool] = True
