"""aptune's hand-written attention kernels: autograd Functions for the CPU.

* ``plain_attention``: ``softmax(q k^T * scale) v`` with row-major batched matmuls and a
  written-out backward; the probabilities are kept (the reference's memory).
* ``recompute_attention``: SDPA's fused CPU forward and a backward that recomputes the
  probabilities head by head from the log-sum-exp with GEMMs; keeps what SDPA keeps. APT's
  prompt keys and values may come apart (``extra_kv``) so a block where only the prompts
  need a gradient works on their rows alone.
* ``split_heads``: the qkv projection's q, k, v as views whose backward writes one buffer.

Every kernel casts its inputs and the incoming gradient to one dtype (:func:`compute_dtype`)
and computes with autocast off, so it is right under each device's autocast dtypes.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import torch

__all__ = [
    "append_kv",
    "compute_dtype",
    "plain_attention",
    "recompute_attention",
    "recompute_supported",
    "split_heads",
]


#: dtypes autocast casts to its low dtype before a matmul (fp64 it leaves alone)
_AUTOCAST_CAST = (torch.float32, torch.float16, torch.bfloat16)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The one dtype an attention kernel computes in: autocast's, where it is on for the
    tensors' device (a matmul there would cast its inputs to it), else their promoted dtype.

    Why: under CUDA autocast softmax, layer_norm and norms return fp32 whatever their input,
    so q, k, v and the incoming gradient need not share a dtype (V2's cosine attention
    normalises q and k to fp32 there while v stays fp16). A kernel that multiplies the
    tensors it was handed fails ("expected m1 and m2 to have the same dtype"); these cast
    to this dtype once and compute with autocast off.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    device = tensors[0].device.type
    if dtype in _AUTOCAST_CAST and torch.amp.is_autocast_available(device):
        if torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
    return dtype


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``device_type`` (where it exists): the kernels cast themselves."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _softmax_grad(dp: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """dL/ds of ``p = softmax(s, -1)`` from dL/dp: torch's fused kernel (one pass) where this
    torch has it under its private name, else the formula ``p * (dp - rowsum(dp * p))``."""
    fused = getattr(torch, "_softmax_backward_data", None)
    if fused is None:
        return p * (dp - (dp * p).sum(-1, keepdim=True))
    return fused(dp, p, -1, p.dtype)


class RowMajorAttention(torch.autograd.Function):
    """``softmax(q k^T * scale) v`` with every batched matmul on row-major operands.

    Why: on CPUs a bf16 ``bmm`` whose operand is a transposed view runs about 4x slower
    than on a contiguous one (measured on an Intel Xeon with AMX; benchmarks/
    bench_train_step.py), and autograd's own backward of ``q @ k.transpose(-2, -1)``
    multiplies such views. Copying each transposed operand once is cheap next to that.
    Saves q, k, v and the probabilities, as the autograd graph of the plain path does, all
    in one dtype (:func:`compute_dtype`): the probabilities in the matmuls' dtype, not the
    fp32 that CUDA autocast's softmax would return.
    """

    @staticmethod
    def forward(ctx, q, k, v, scale: float):  # type: ignore[override]
        dtype = compute_dtype(q, k, v)
        with _autocast_off(q.device.type):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            kt = k.transpose(-2, -1).contiguous()  # (B, h, d, M)
            p = torch.matmul(q * scale, kt).softmax(-1)  # (B, h, N, M)
            ctx.save_for_backward(q, k, v, p)
            ctx.scale = scale
            return torch.matmul(p, v)  # (B, h, N, d)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, k, v, p = ctx.saved_tensors
        with _autocast_off(q.device.type):
            grad = grad.to(p.dtype).contiguous()
            dp = torch.matmul(grad, v.transpose(-2, -1).contiguous())  # (B, h, N, M)
            dvt = torch.matmul(grad.transpose(-2, -1).contiguous(), p)  # (B, h, d, M)
            ds = _softmax_grad(dp, p)  # (B, h, N, M)
            dq = torch.matmul(ds, k.contiguous()) * ctx.scale  # (B, h, N, d)
            dkt = torch.matmul(q.transpose(-2, -1).contiguous(), ds) * ctx.scale  # (B, h, d, M)
        # in the compute dtype; autograd casts each to its input's dtype
        return dq, dkt.transpose(-2, -1), dvt.transpose(-2, -1), None


def plain_attention(q, k, v, scale: float):
    """The plain (non-fused) attention path: (B, h, N, d), (B, h, M, d) x2 -> (B, h, N, d)."""
    return RowMajorAttention.apply(q, k, v, scale)


def _head_views(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, 3 * h * d) -> q, k, v, each a (B, h, N, d) view."""
    B, N, C = qkv.shape
    return qkv.reshape(B, N, 3, heads, C // (3 * heads)).permute(2, 0, 3, 1, 4).unbind(0)


class SplitHeads(torch.autograd.Function):
    """(B, N, 3 * h * d) -> q, k, v, each a (B, h, N, d) view; the backward writes the three
    gradients into one (B, N, 3, h, d) buffer.

    Why: autograd's backward of ``reshape -> permute -> unbind`` stacks the three gradients
    into a new (3, B, h, N, d) tensor and then copies that into (B, N, 3, h, d) order: two
    passes over every block's qkv gradient, where one strided copy of each does.
    """

    @staticmethod
    def forward(ctx, qkv, heads: int):  # type: ignore[override]
        ctx.set_materialize_grads(False)  # a missing gradient is a zero slice, not a tensor
        ctx.shape, ctx.heads = qkv.shape, heads
        return _head_views(qkv, heads)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        B, N, C = ctx.shape
        like = next((g for g in grads if g is not None), None)
        if like is None:
            return None, None
        out = like.new_empty(B, N, C)
        for part, g in zip(_head_views(out, ctx.heads), grads):
            part.zero_() if g is None else part.copy_(g)
        return out, None


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v of a fused qkv projection (B, N, 3 * h * d): (B, h, N, d) views each."""
    if not (torch.is_grad_enabled() and qkv.requires_grad):
        return _head_views(qkv, heads)
    return SplitHeads.apply(qkv, heads)


#: elements of one chunk of a head's transposed probabilities (keys x queries) in the
#: recomputing backward: bounds its two transient buffers (2 x 32 MiB in bf16) on long
#: clips; ViT-S/B 16x224 (1570 x 1568) is one chunk. Cache-sized chunks (2^18-2^21
#: elements) measured 1.15-1.4x slower per bf16 block here (bench_attention.py --kernels
#: --chunks 18 19 20 21): every extra GEMM call repacks its operands.
_CHUNK_ELEMENTS = 1 << 24


def append_kv(
    k: torch.Tensor, v: torch.Tensor, extra_kv: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values with APT's prompt keys and values appended: (B, h, N+M, d) each."""
    if extra_kv is None:
        return k, v
    return torch.cat((k, extra_kv[0]), dim=-2), torch.cat((v, extra_kv[1]), dim=-2)


def _split(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (fp32/fp64) as ``hi + lo`` in ``dtype``: two bf16 halves carry ~16 mantissa bits."""
    hi = x.to(dtype)
    return hi, (x - hi.to(x.dtype)).to(dtype)


def _columns(x: torch.Tensor, tail: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``[x * scale, hi(tail), lo(tail)]^T`` per head: (B, h, n, d), (B, h, n) -> (B, h, d + 2, n).

    Why: a per-row constant subtracted inside a matmul (``[k, 1] @ [q, -c]^T``) is summed in
    the GEMM's fp32 accumulator and rounded once, where subtracting it from the bf16 product
    afterwards would round twice and cost a pass over the (N+M, N) scores. Written as a
    transposing copy, then the scale on the copy's contiguous rows: one ``mul`` that
    transposes, or a scaled copy transposed afterwards, measured slower on ViT-S heads.
    """
    d = x.shape[-1]
    out = x.new_empty(x.shape[:-2] + (d + 2, x.shape[-2]))
    out[..., :d, :].copy_(x.transpose(-2, -1))
    if scale != 1.0:
        out[..., :d, :].mul_(scale)
    out[..., d, :], out[..., d + 1, :] = _split(tail, x.dtype)
    return out


def _with_ones(x: torch.Tensor) -> torch.Tensor:
    """(..., m, d) -> ``[x, 1, 1]``: (..., m, d + 2), the partner of :func:`_columns`."""
    out = x.new_empty(x.shape[:-1] + (x.shape[-1] + 2,))
    out[..., :-2] = x
    out[..., -2:] = 1
    return out


def _chunk_rows(total: int, width: int) -> int:
    """Rows per chunk of a (total, width) block: at most ``_CHUNK_ELEMENTS`` elements, and
    chunks of equal size (1570 keys -> 4 x 393, not 3 x 512 + 34)."""
    most = max(1, min(total, _CHUNK_ELEMENTS // max(width, 1)))
    count = -(-total // most)
    return -(-total // count)


def _mm_into(
    a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, total: torch.Tensor | None
) -> None:
    """``out = a @ b`` for a whole head, or ``total += a @ b`` (higher precision) per chunk."""
    if total is None:
        torch.mm(a, b, out=out)
    else:
        total.add_(torch.mm(a, b).to(total.dtype))  # a same-dtype add: mixed ones are slow


#: torch's fused CPU attention forward that also returns the log-sum-exp (a private op)
_FLASH_CPU_OP = "_scaled_dot_product_flash_attention_for_cpu"


def _flash_cpu() -> Callable | None:
    """SDPA's fused CPU forward returning ``(out, lse)``, or None where this torch has no op
    of that name: it is private, so a release may rename it, and SDPA then takes over."""
    return getattr(torch.ops.aten, _FLASH_CPU_OP, None)


def recompute_supported() -> bool:
    """Whether ``recompute_attention`` can train with its own kernel on this torch (else it
    is SDPA)."""
    return _flash_cpu() is not None


class RecomputeAttention(torch.autograd.Function):
    """``softmax(q k^T * scale) v``: SDPA's fused CPU forward, and a backward that recomputes
    the probabilities head by head with row-major matmuls instead of storing them.

    Why: the plain kernel's bf16 backward is fast on AMX CPUs but keeps a (B, h, N, N+M)
    probability tensor per block (about the reference's activation memory); torch's fused
    CPU backward keeps only q, k, v, the output and the log-sum-exp but runs far below GEMM
    speed. This keeps what the fused kernel keeps and spends its time in GEMMs. Per head (or
    per chunk of keys c on long clips), in transposed form (keys x queries):
    ``P^T = exp(k_c (q * scale)^T - lse)`` (lse folded into the matmul, one exp pass),
    ``dV_c = P^T dO``, ``dS^T = P^T * (v_c dO^T - rowsum(dO * O))`` (the row sum folded in
    likewise, one multiply pass), ``dK_c = dS^T (q * scale)``, ``dQ^T += K_c^T dS^T``.
    Working on keys x queries makes dK and dV row-major and complete per chunk (only dQ
    sums over chunks, in fp32): 1.14-1.15x faster than the queries x keys form per block,
    forward included (bench_attention.py --kernels, against ``--baseline``). The
    probabilities are recomputed from the log-sum-exp, so rows whose scores sit near their
    maximum are more exact than the plain path's bf16 scores (tests/models).
    """

    @staticmethod
    def forward(ctx, q, k, v, k_extra, v_extra, scale: float):  # type: ignore[override]
        extra = k_extra is not None
        dtype = compute_dtype(q, k, v, *((k_extra, v_extra) if extra else ()))
        with _autocast_off(q.device.type):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            extra_kv = (k_extra.to(dtype), v_extra.to(dtype)) if extra else None
            keys, values = append_kv(k, v, extra_kv)
            flash = _flash_cpu()  # recompute_attention calls this only where it exists
            # (B, h, N, d), and the log-sum-exp (B, h, N) in fp32 (fp64 for fp64 inputs)
            out, lse = flash(q, keys, values, 0.0, False, scale=scale)
        ctx.save_for_backward(q, keys, values, out, lse)
        ctx.scale, ctx.extra, ctx.tokens = scale, extra, k.shape[-2]
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        with _autocast_off(grad.device.type):
            return RecomputeAttention._backward(ctx, grad)

    @staticmethod
    def _backward(ctx, grad):
        q, k, v, out, lse = ctx.saved_tensors
        need_q, need_k, need_v, need_k_extra, need_v_extra = ctx.needs_input_grad[:5]
        scale, tokens = ctx.scale, ctx.tokens
        B, H, n, d = q.shape
        m = k.shape[-2]
        # keys whose probabilities are needed: all of them for dQ or a token key's or value's
        # gradient; only the extra (prompt) keys where nothing else needs one (the first
        # APT block, whose q, k, v come from the frozen patch embedding)
        first = 0 if need_q or need_k or need_v else tokens
        wants = (need_k, need_v, need_k_extra, need_v_extra)
        need_k, need_v = need_k or need_k_extra, need_v or need_v_extra  # (m, d) buffers
        acc = lse.dtype  # fp32 (fp64 for fp64 inputs): where row sums and chunk sums live
        grad = grad.to(q.dtype)
        delta = (grad.to(acc) * out.to(acc)).sum(-1)  # (B, h, N): rowsum(dO * O) = rowsum(dP * P)
        q_cols = _columns(q, -lse, scale)  # [q * scale, -lse]^T: (B, h, d + 2, N)
        g_cols = _columns(grad, -delta)  # [dO, -delta]^T
        k_rows, v_rows = _with_ones(k[..., first:, :]), _with_ones(v[..., first:, :])
        dk = k.new_empty(B, H, m, d) if need_k else None  # rows from `first` on are set
        dv = v.new_empty(B, H, m, d) if need_v else None
        dq_t = q.new_empty(B, H, d, n) if need_q else None  # dQ^T, row-major per head
        rows = _chunk_rows(m - first, n)
        p_buf, ds_buf = q.new_empty(rows, n), q.new_empty(rows, n)
        for b in range(B):
            for h in range(H):
                # (N, d), scaled: a transposed view, which these GEMMs read at full speed
                q_h = q_cols[b, h, :d].t() if need_k else None
                g_h = grad[b, h] if need_v else None  # (N, d)
                k_t = k[b, h].t().contiguous() if need_q else None  # (d, m)
                total = torch.zeros(d, n, dtype=acc) if need_q and rows < m - first else None
                for i in range(first, m, rows):
                    j = min(i + rows, m)
                    p, ds = p_buf[: j - i], ds_buf[: j - i]
                    torch.mm(k_rows[b, h, i - first : j - first], q_cols[b, h], out=p).exp_()
                    if need_v:  # p: P^T rows of these keys
                        torch.mm(p, g_h, out=dv[b, h, i:j])
                    ds_rows = v_rows[b, h, i - first : j - first]
                    torch.mm(ds_rows, g_cols[b, h], out=ds).mul_(p)  # dS^T rows
                    if need_k:
                        torch.mm(ds, q_h, out=dk[b, h, i:j])
                    if need_q:
                        _mm_into(k_t[:, i:j], ds, dq_t[b, h], total)
                if total is not None:
                    dq_t[b, h] = total
        dq = dq_t.mul_(scale).transpose(-2, -1) if need_q else None
        if not ctx.extra:
            return dq, dk, dv, None, None, None
        dk, dk_extra = dk.split((tokens, m - tokens), -2) if need_k else (None, None)
        dv, dv_extra = dv.split((tokens, m - tokens), -2) if need_v else (None, None)
        parts = (dk, dv, dk_extra, dv_extra)
        return (dq,) + tuple(t if w else None for t, w in zip(parts, wants)) + (None,)


def recompute_attention(q, k, v, scale: float, extra_kv=None):
    """Attention that keeps what SDPA keeps and trains at GEMM speed on CPUs.

    ``extra_kv``: APT's prompt keys and values, (B, h, M, d) each, appended to ``k`` and
    ``v``; passed apart so that where only they need a gradient (the first APT block) the
    backward works on their M rows alone. Without a backward to run (inference, export
    tracing), off the CPU (CUDA's fused kernels already have a fast backward) and on a torch
    without the fused CPU forward it builds on (:func:`_flash_cpu`) this is SDPA itself: on
    the CPU the same fused forward."""
    tensors = (q, k, v) + (tuple(extra_kv) if extra_kv is not None else ())
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if q.device.type != "cpu" or not grads or _flash_cpu() is None:
        k, v = append_kv(k, v, extra_kv)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)
    k_extra, v_extra = extra_kv if extra_kv is not None else (None, None)
    return RecomputeAttention.apply(q, k, v, k_extra, v_extra, scale)
