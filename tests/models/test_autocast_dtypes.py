"""Every attention kernel under the dtypes each device's autocast produces, forward and
backward. CUDA autocast runs softmax, layer_norm and vector norms in fp32 whatever their
input (CPU autocast keeps them in bf16/fp16); ``cuda_autocast`` reproduces those rules on
a CPU by registering the CUDA policy as CPU autocast kernels for the test's duration."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

import aptune
from aptune.models.attention_kernels import compute_dtype, plain_attention, recompute_attention

LOW = (torch.float16, torch.bfloat16)
LOW_IDS = ["fp16", "bf16"]
#: ops CUDA autocast runs in fp32 (its "fp32" and "fp32_set_opt_dtype" lists) that the
#: model's forward reaches: softmax in the plain kernel, LayerNorm, V2's F.normalize
_CUDA_FP32_OPS = ("softmax.int", "layer_norm", "native_layer_norm", "linalg_vector_norm")
_AUTOCAST_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.AutocastCPU)


def _fp32_policy(name: str) -> Callable:
    """An autocast kernel for ``aten::name`` that runs it on fp32 copies of its low-precision
    floating-point inputs, as CUDA autocast's fp32 policy does."""
    packet, _, overload = name.partition(".")
    op = getattr(getattr(torch.ops.aten, packet), overload or "default")

    def kernel(*args, **kwargs):
        up = [a.float() if isinstance(a, torch.Tensor) and a.dtype in LOW else a for a in args]
        with torch._C._ExcludeDispatchKeyGuard(_AUTOCAST_CPU):
            return op(*up, **kwargs)

    return kernel


@contextlib.contextmanager
def cuda_autocast(dtype: torch.dtype) -> Iterator[None]:
    """CPU autocast in ``dtype`` with CUDA autocast's fp32 ops: the dtypes a CUDA run sees."""
    lib = torch.library.Library("aten", "IMPL")
    try:
        for name in _CUDA_FP32_OPS:
            lib.impl(name, _fp32_policy(name), "AutocastCPU")
        with torch.autocast("cpu", dtype=dtype):
            yield
    finally:
        lib._destroy()


def autocast(rules: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    return cuda_autocast(dtype) if rules == "cuda" else torch.autocast("cpu", dtype=dtype)


@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
def test_the_simulation_has_cuda_autocast_dtypes(dtype):
    x = torch.randn(2, 8, 16)
    w = torch.randn(16, 16)
    with cuda_autocast(dtype):
        y = F.linear(x, w)  # (2, 8, 16)
        assert y.dtype == dtype and (y @ y.transpose(-2, -1)).dtype == dtype
        assert y.softmax(-1).dtype == torch.float32
        assert F.layer_norm(y, (16,)).dtype == torch.float32
        assert F.normalize(y, dim=-1).dtype == torch.float32
        assert compute_dtype(y.float(), y) == dtype  # what the kernels compute in
    with torch.autocast("cpu", dtype=dtype):  # the CPU rules again once it is left
        assert F.linear(x, w).softmax(-1).dtype == dtype


# -- the kernels alone ----------------------------------------------------------------------
def _qkv(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q (2, 3, 10, 8), k and v (2, 3, 12, 8), and prompt keys/values (2, 3, 2, 8), fp64."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, 10, 8, generator=g, dtype=torch.float64)
    kv = [torch.randn(2, 3, n, 8, generator=g, dtype=torch.float64) for n in (12, 12, 2, 2)]
    return (q, *kv)


KERNELS = {
    "plain": lambda q, k, v, pk, pv: plain_attention(
        q, torch.cat((k, pk.to(k.dtype)), -2), torch.cat((v, pv.to(v.dtype)), -2), 0.35
    ),
    "recompute": lambda q, k, v, pk, pv: recompute_attention(q, k, v, 0.35, (pk, pv)),
    "sdpa": lambda q, k, v, pk, pv: F.scaled_dot_product_attention(
        q, torch.cat((k, pk.to(k.dtype)), -2), torch.cat((v, pv.to(v.dtype)), -2), scale=0.35
    ),
}


def _reference(q, k, v, pk, pv, w) -> tuple[torch.Tensor, ...]:
    """Gradients of ``sum(out * w)`` in fp64 by autograd of the formula."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, pk, pv)]
    q, k, v, pk, pv = leaves
    out = ((q * 0.35) @ torch.cat((k, pk), -2).transpose(-2, -1)).softmax(-1)
    out = out @ torch.cat((v, pv), -2)
    return torch.autograd.grad((out * w).sum(), leaves)


@pytest.mark.parametrize("backward_inside", [False, True], ids=["bwd_out", "bwd_in"])
@pytest.mark.parametrize("mixed", [False, True], ids=["low", "mixed"])
@pytest.mark.parametrize("rules", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_gradients_under_autocast(kernel, dtype, rules, mixed, backward_inside):
    """q, k, v in the low dtype (as a linear under autocast gives them) or, ``mixed``, q and
    k in fp32 beside a low-precision v (V2's cosine attention under CUDA autocast: F.normalize
    returns fp32); the incoming gradient in the output's dtype; backward outside autocast (a
    CUDA backward runs on autograd's device thread, autocast off) or inside it (a CPU
    backward runs in the caller's thread and state)."""
    q, k, v, pk, pv = _qkv()
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ref = _reference(q, k, v, pk, pv, w)
    leaves = [t.float().requires_grad_() for t in (q, k, v, pk, pv)]
    fq, fk, fv, fpk, fpv = leaves
    low_v = fv.to(dtype)
    low_q, low_k = (fq, fk) if mixed else (fq.to(dtype), fk.to(dtype))
    with autocast(rules, dtype):
        out = KERNELS[kernel](low_q, low_k, low_v, fpk, fpv)
    assert out.dtype == dtype
    with autocast(rules, dtype) if backward_inside else contextlib.nullcontext():
        grads = torch.autograd.grad((out * w.to(dtype)).sum(), leaves)
    tolerance = 0.02 if dtype == torch.bfloat16 else 0.004
    for name, g, r in zip("q k v pk pv".split(), grads, ref):
        assert g.dtype == torch.float32, name
        error = float((g.double() - r).norm() / r.norm())
        assert error < tolerance, (name, error)


# -- the whole model -----------------------------------------------------------------------
CONFIGS = {
    "apt": dict(transfer_type="prompt", prompt_num_tokens=2),
    "apt_cosine": dict(transfer_type="prompt", prompt_num_tokens=2, cos_attn=True),
    "lora": dict(transfer_type="lora"),
    "full": dict(transfer_type="end2end"),
}


def _model(config: str, impl: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = aptune.build_model(
        "vit_nano", num_classes=5, num_frames=4, input_size=32, attn_impl=impl, **CONFIGS[config]
    )
    with torch.no_grad():  # away from the init's identity LayerNorms and zero biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _grads(model: torch.nn.Module, x: torch.Tensor, context) -> dict[str, torch.Tensor]:
    with context:
        out = model(x)
    out.float().square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rules", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", LOW, ids=LOW_IDS)
@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_model_trains_under_each_devices_autocast(config, impl, dtype, rules):
    """A train step's gradients under autocast equal the fp32 step's to low-precision
    rounding, for every kernel and method (the first APT block's prompt-rows path too)."""
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(2))
    expected = _grads(_model(config, "sdpa"), x, contextlib.nullcontext())
    got = _grads(_model(config, impl), x, autocast(rules, dtype))
    assert got.keys() == expected.keys() and got
    tolerance = 0.05 if dtype == torch.bfloat16 else 0.01
    for name, g in got.items():
        assert g.dtype == torch.float32 and bool(g.isfinite().all()), name
        error = float((g - expected[name]).norm() / expected[name].norm().clamp_min(1e-12))
        assert error < tolerance, (name, error)
