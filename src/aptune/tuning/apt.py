"""Attention Prompt Tuning (APT): learnable key/value prompts inside each attention.

For every block i in [start, end] two tensors ``Pk[i], Pv[i]`` of shape (num_tokens, d)
are appended to that block's keys and values, shared by all heads; queries remain the
data tokens, so the sequence length (and every later cost) is unchanged - the point of
APT compared with VPT. Stored as ``kv_prompts.prompt_embeddings_{k,v}`` (L, n, d) and
``kv_prompts.prompt_scale`` (L, 2, n): the reference's tensor layout, so its checkpoints
load by renaming only. On a VideoMAE V2 backbone with cosine attention the prompt keys are
L2-normalised together with the data keys (``Attention.forward`` normalises after the
concatenation), so a prompt competes on direction, not on length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from aptune.models.vit import VisionTransformer
from aptune.tuning.base import MethodConfig, require


class AttentionPrompts(nn.Module):
    """Per-layer key/value prompts; called with a block index, returns (Pk, Pv) or None."""

    def __init__(
        self,
        num_layers: int,
        num_tokens: int,
        head_dim: int,
        first_block: int,
        dropout: float,
        reparam: bool,
        patch_size: int = 16,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.first_block, self.num_layers, self.num_tokens = first_block, num_layers, num_tokens
        # init of the reference (VPT's): uniform(-v, v), v = sqrt(6 / (3*16*16 + d))
        bound = math.sqrt(6.0 / float(in_chans * patch_size * patch_size + head_dim))
        self.prompt_embeddings_k = nn.Parameter(torch.empty(num_layers, num_tokens, head_dim))
        self.prompt_embeddings_v = nn.Parameter(torch.empty(num_layers, num_tokens, head_dim))
        nn.init.uniform_(self.prompt_embeddings_k, -bound, bound)
        nn.init.uniform_(self.prompt_embeddings_v, -bound, bound)
        self.prompt_scale = nn.Parameter(torch.ones(num_layers, 2, num_tokens)) if reparam else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, block_index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        layer = block_index - self.first_block
        if not 0 <= layer < self.num_layers:
            return None
        pk = self.dropout(self.prompt_embeddings_k[layer])  # (n, d)
        pv = self.dropout(self.prompt_embeddings_v[layer])
        if self.prompt_scale is not None:
            # max(scale, 1) per token, after dropout (as the reference)
            scale = self.prompt_scale[layer]
            scale = torch.maximum(scale, torch.ones_like(scale))  # (2, n); half grad at 1
            pk = pk * scale[0, :, None]
            pv = pv * scale[1, :, None]
        return pk, pv

    def extra_repr(self) -> str:
        last = self.first_block + self.num_layers - 1
        return f"blocks={self.first_block}..{last}, num_tokens={self.num_tokens}"


@dataclass
class AptConfig(MethodConfig):
    """``--transfer_type prompt``: flags ``--prompt_num_tokens``, ``--prompt_start`` ..."""

    name: ClassVar[str] = "prompt"
    param_prefixes: ClassVar[tuple[str, ...]] = ("prompt_",)

    num_tokens: int = 2
    start: int = 0
    end: int | None = None  # None: the last block
    dropout: float = 0.0
    reparam: bool = False

    def __post_init__(self) -> None:
        require(self.num_tokens >= 1, f"--prompt_num_tokens must be >= 1, got {self.num_tokens}")
        require(self.start >= 0, f"--prompt_start must be >= 0, got {self.start}")
        require(
            self.end is None or self.end >= self.start,
            f"--prompt_end ({self.end}) must be >= --prompt_start ({self.start})",
        )
        require(
            0.0 <= self.dropout < 1.0, f"--prompt_dropout must be in [0, 1), got {self.dropout}"
        )

    @classmethod
    def flag_prefix(cls) -> str:
        return "prompt_"

    def check_model(self, model: VisionTransformer) -> None:
        last = model.depth - 1
        require(
            self.start <= last and (self.end is None or self.end <= last),
            f"--prompt_start/--prompt_end ({self.start}..{self.end}) must lie in 0..{last}: "
            f"the model has {model.depth} blocks",
        )

    def attach(self, model: VisionTransformer) -> None:
        self.check_model(model)
        end = model.depth - 1 if self.end is None else self.end
        model.kv_prompts = AttentionPrompts(
            num_layers=end - self.start + 1,
            num_tokens=self.num_tokens,
            head_dim=model.head_dim,
            first_block=self.start,
            dropout=self.dropout,
            reparam=self.reparam,
            patch_size=model.patch_embed.patch_size,
        )


def apply_apt(
    model: VisionTransformer,
    num_tokens: int = 2,
    start: int = 0,
    end: int | None = None,
    dropout: float = 0.0,
    reparam: bool = False,
) -> VisionTransformer:
    """Attach APT prompts to ``model`` (in place, recorded in ``model.tuning_configs``)."""
    cfg = AptConfig(num_tokens=num_tokens, start=start, end=end, dropout=dropout, reparam=reparam)
    cfg.attach(model)
    model.tuning_configs = [*model.tuning_configs, cfg]
    return model
