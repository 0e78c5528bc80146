"""Small parameter-free pieces of the ViT: the fixed position table, stochastic depth,
VideoMAE's weight init and the two hand-written attention kernels. Kept apart so ``vit.py`` reads as
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


__all__ = [
    "DropPath",
    "init_weights",
    "plain_attention",
    "recompute_attention",
    "sinusoid_table",
]


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


#: rows of a head processed at once in the recomputing backward: bounds its two transient
#: (rows, N+M) buffers (2 x 32 MiB in bf16) on long clips; ViT-S/B 16x224 is one chunk
_RECOMPUTE_ELEMENTS = 1 << 24


def _split(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (fp32/fp64) as ``hi + lo`` in ``dtype``: two bf16 halves carry ~16 mantissa bits."""
    hi = x.to(dtype)
    return hi, (x - hi.to(x.dtype)).to(dtype)


def _augmented(a: torch.Tensor, tail: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``[a * scale, hi(tail), lo(tail)]`` along the last dim: (..., n, d) -> (..., n, d + 2).

    Why: a per-row constant subtracted inside a matmul (``[a, -c] @ [b; 1]``) is summed in
    the GEMM's fp32 accumulator and rounded once, where subtracting it from the bf16 product
    afterwards would round twice and cost a pass over the (n, N+M) scores.
    """
    out = a.new_empty(a.shape[:-1] + (a.shape[-1] + 2,))
    torch.mul(a, scale, out=out[..., :-2])
    hi, lo = _split(tail, a.dtype)
    out[..., -2] = hi
    out[..., -1] = lo
    return out


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """(..., m, d) -> its transpose with two rows of ones below: (..., d + 2, m), row-major."""
    out = x.new_ones(x.shape[:-2] + (x.shape[-1] + 2, x.shape[-2]))
    out[..., :-2, :] = x.transpose(-2, -1)
    return out


def _mm_into(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, total: torch.Tensor | None
) -> None:
    """``out = a @ b`` for a whole head, or ``total += a @ b`` (higher precision) per chunk."""
    if total is None:
        torch.mm(a, b, out=out)
    else:
        total.add_(torch.mm(a, b).to(total.dtype))  # a same-dtype add: mixed ones are slow


class RecomputeAttention(torch.autograd.Function):
    """``softmax(q k^T * scale) v``: SDPA's fused CPU forward, and a backward that recomputes
    the probabilities head by head with row-major matmuls instead of storing them.

    Why: the plain kernel's bf16 backward is fast on AMX CPUs but keeps a (B, h, N, N+M)
    probability tensor per block (about the reference's activation memory); torch's fused
    CPU backward keeps only q, k, v, the output and the log-sum-exp but runs far below GEMM
    speed. This keeps what the fused kernel keeps and spends its time in GEMMs: per head,
    ``P = exp(q k^T * scale - lse)`` (lse folded into the matmul, one exp pass),
    ``dV = P^T dO``, ``dS = P * (dO V^T - rowsum(dO * O))`` (the row sum folded into the
    matmul likewise, one multiply pass), ``dQ = dS K * scale``, ``dK = dS^T Q * scale``.
    The probabilities are recomputed from the log-sum-exp, so rows whose scores sit near
    their maximum are more exact than the plain path's bf16 scores (tests/models).
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):  # type: ignore[override]
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, scale=scale
        )  # (B, h, N, d), (B, h, N) in fp32 (fp64 for fp64 inputs)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, out, lse = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        scale = ctx.scale
        B, H, n, d = q.shape
        m = k.shape[-2]
        acc = lse.dtype  # fp32 (fp64 for fp64 inputs): where row sums and chunk sums live
        grad = grad.to(q.dtype)
        delta = (grad.to(acc) * out.to(acc)).sum(-1)  # (B, h, N): rowsum(dO * O) = rowsum(dP * P)
        qa = _augmented(q, -lse, scale)  # rows of [q * scale, -lse]: q k^T * scale - lse
        ga = _augmented(grad, -delta)  # rows of [dO, -delta]: dO V^T - delta
        ka, va = _with_ones(k), _with_ones(v)  # (B, h, d + 2, m)
        dq = torch.empty_like(q) if need_q else None
        # dK^T, dV^T are made row-major, (d, m) per head; returned as transposed views
        dk_t = k.new_empty(B, H, d, m) if need_k else None
        dv_t = v.new_empty(B, H, d, m) if need_v else None
        rows = max(1, min(n, _RECOMPUTE_ELEMENTS // m))
        p_buf, ds_buf = q.new_empty(rows, m), q.new_empty(rows, m)
        for b in range(B):
            for h in range(H):
                q_t = qa[b, h, :, :d].t().contiguous() if need_k else None  # (d, N), scaled
                g_t = grad[b, h].t().contiguous() if need_v else None  # (d, N)
                k_h = k[b, h].contiguous() if need_q else None  # (m, d)
                sum_k = torch.zeros(d, m, dtype=acc) if need_k and rows < n else None
                sum_v = torch.zeros(d, m, dtype=acc) if need_v and rows < n else None
                for i in range(0, n, rows):
                    j = min(i + rows, n)
                    p, ds = p_buf[: j - i], ds_buf[: j - i]
                    torch.mm(qa[b, h, i:j], ka[b, h], out=p).exp_()  # P rows
                    if need_v:
                        _mm_into(g_t[:, i:j], p, dv_t[b, h], sum_v)
                    torch.mm(ga[b, h, i:j], va[b, h], out=ds).mul_(p)  # dS rows
                    if need_q:
                        torch.mm(ds, k_h, out=dq[b, h, i:j])
                    if need_k:
                        _mm_into(q_t[:, i:j], ds, dk_t[b, h], sum_k)
                if sum_k is not None:
                    dk_t[b, h] = sum_k
                if sum_v is not None:
                    dv_t[b, h] = sum_v
        dk = dk_t.transpose(-2, -1) if need_k else None
        dv = dv_t.transpose(-2, -1) if need_v else None
        if need_q:
            dq.mul_(scale)
        return dq, dk, dv, None


def recompute_attention(q, k, v, scale: float):
    """Attention that keeps what SDPA keeps and trains at GEMM speed on CPUs. Without a
    backward to run (inference, export tracing) and off the CPU (CUDA's fused kernels
    already have a fast backward) it is SDPA itself: on the CPU the same fused forward."""
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type != "cpu" or not grads:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    return RecomputeAttention.apply(q, k, v, scale)
