"""V-JEPA 2's attentive classifier head: self-attention over the tokens, then one learned
query that cross-attends to them.

Parameter names follow Meta's probe files (``pooler.query_tokens``, ``pooler.blocks.N``
with a fused ``attn.qkv``, ``pooler.cross_attention_block.{norm1, xattn.q, xattn.kv,
norm2, mlp}``), so those load after stripping ``module.``; Hugging Face's separate q/k/v
projections are fused on load (``models/vjepa2_keys.py``). The cross-attention has no
output projection, and its query enters unnormalised: ``q + xattn(q, norm1(x))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aptune.models.attention_kernels import split_heads


class PoolerMlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PoolerSelfAttention(nn.Module):
    """Plain multi-head self-attention, fused qkv with a full bias, output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"pooler width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)  # each (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class PoolerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = PoolerSelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PoolerMlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    """Queries (B, Q, D) attend to tokens (B, N, D); ``kv`` is one fused projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"pooler width {dim} is not divisible by its {num_heads} heads")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, Q, D = q.shape
        h = self.num_heads
        q = self.q(q).unflatten(-1, (h, D // h)).transpose(1, 2)  # (B, h, Q, d)
        k, v = self.kv(x).unflatten(-1, (2, h, D // h)).permute(2, 0, 3, 1, 4)  # (B, h, N, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(B, Q, D)


class CrossAttentionBlock(nn.Module):
    """``q + xattn(q, norm1(x))``, then ``q + mlp(norm2(q))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.xattn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = PoolerMlp(dim, mlp_hidden)

    def forward(self, q: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        q = q + self.xattn(q, self.norm1(x))
        return q + self.mlp(self.norm2(q))


class AttentivePooler(nn.Module):
    """(B, N, D) tokens -> (B, D): ``depth`` self-attention blocks, then the query's
    cross-attention block (Meta's probes: 3 blocks, 16 heads, LayerNorm eps 1e-5)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 16,
        depth: int = 3,
        mlp_ratio: float = 4.0,
        eps: float = 1e-5,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        self.num_heads, self.eps = num_heads, eps
        hidden = int(dim * mlp_ratio)
        self.query_tokens = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList(PoolerBlock(dim, num_heads, hidden, eps) for _ in range(depth))
        self.cross_attention_block = CrossAttentionBlock(dim, num_heads, hidden, eps)
        self._init(init_std)

    @torch.no_grad()
    def _init(self, std: float) -> None:
        """Meta's init: trunc-normal(std) weights, zero biases, the residual outputs of
        block i (1-based) scaled by 1/sqrt(i) and the cross block's by 1/sqrt(depth + 1)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.query_tokens, std=std)
        for i, blk in enumerate(self.blocks, 1):
            blk.attn.proj.weight.div_(i**0.5)
            blk.mlp.fc2.weight.div_(i**0.5)
        self.cross_attention_block.mlp.fc2.weight.div_((len(self.blocks) + 1) ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        q = self.query_tokens.to(x.dtype).expand(x.shape[0], -1, -1)
        return self.cross_attention_block(q, x).squeeze(1)


__all__ = ["AttentivePooler", "CrossAttention", "CrossAttentionBlock", "PoolerBlock"]
