"""Small parameter-free pieces of the ViT: the fixed position table, stochastic depth,
VideoMAE's weight init and the plain attention kernel. Kept apart so ``vit.py`` reads as
the transformer alone."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid table of VideoMAE: (1, N, D), computed in float64 like the reference."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, D)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)  # (1, N, D)


class DropPath(nn.Module):
    """Stochastic depth per sample; identity when ``p == 0`` or in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(m: nn.Module, linear_init: Callable[[torch.Tensor], object] | None = None) -> None:
    """VideoMAE's init: linears trunc-normal(0.02) (or ``linear_init``, e.g. the xavier of
    pre-training), LayerNorms to identity, the tubelet conv as a linear (xavier-uniform)."""
    if isinstance(m, nn.Linear):
        if linear_init is None:
            nn.init.trunc_normal_(m.weight, std=0.02)
        else:
            linear_init(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv3d):
        w = m.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


__all__ = ["DropPath", "init_weights", "sinusoid_table"]


class RowMajorAttention(torch.autograd.Function):
    """``softmax(q k^T * scale) v`` with every batched matmul on row-major operands.

    Why: on CPUs a bf16 ``bmm`` whose operand is a transposed view runs about 4x slower
    than on a contiguous one (measured on an Intel Xeon with AMX; benchmarks/
    bench_train_step.py), and autograd's own backward of ``q @ k.transpose(-2, -1)``
    multiplies such views. Copying each transposed operand once is cheap next to that.
    Saves q, k, v and the probabilities, as the autograd graph of the plain path does.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):  # type: ignore[override]
        kt = k.transpose(-2, -1).contiguous()  # (B, h, d, M)
        p = torch.matmul(q * scale, kt).softmax(-1)  # (B, h, N, M)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, v)  # (B, h, N, d)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, p = ctx.saved_tensors
        grad = grad.contiguous()
        dp = torch.matmul(grad, v.transpose(-2, -1).contiguous())  # (B, h, N, M)
        dvt = torch.matmul(grad.transpose(-2, -1).contiguous(), p)  # (B, h, d, M)
        ds = torch._softmax_backward_data(dp, p, -1, p.dtype)  # (B, h, N, M)
        dq = torch.matmul(ds, k.contiguous()) * ctx.scale  # (B, h, N, d)
        dkt = torch.matmul(q.transpose(-2, -1).contiguous(), ds) * ctx.scale  # (B, h, d, M)
        return dq, dkt.transpose(-2, -1), dvt.transpose(-2, -1), None


def plain_attention(q, k, v, scale: float):
    """The plain (non-fused) attention path: (B, h, N, d), (B, h, M, d) x2 -> (B, h, N, d)."""
    return RowMajorAttention.apply(q, k, v, scale)
