"""aptune's CPU kernels call two private torch ops (``torch._softmax_backward_data`` and
``aten._scaled_dot_product_flash_attention_for_cpu``). A torch release may rename or drop
them: the kernels look them up when they run and fall back (the softmax gradient's
formula, SDPA), so such a torch still trains, to the same gradients."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.engine import speed
from aptune.models import attention_kernels as kernels

FLASH_CPU = "_scaled_dot_product_flash_attention_for_cpu"


class _Without:
    """A stand-in for ``torch.ops.aten`` that lacks some ops, as a torch that renamed them."""

    def __init__(self, namespace: object, hidden: set[str]) -> None:
        self._namespace, self._hidden = namespace, hidden

    def __getattr__(self, name: str) -> object:
        if name in self._hidden:
            raise AttributeError(f"'_OpNamespace' 'aten' object has no attribute '{name}'")
        return getattr(self._namespace, name)


def _hide_private_ops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(torch, "_softmax_backward_data")
    monkeypatch.setattr(torch.ops, "aten", _Without(torch.ops.aten, {FLASH_CPU}))


def _train_grads(impl: str, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """Prompt and head gradients of one APT train step (forward + backward)."""
    torch.manual_seed(0)
    model = aptune.build_model(
        "vit_nano", num_classes=5, transfer_type="prompt", prompt_num_tokens=2, num_frames=4,
        input_size=32, attn_impl=impl,
    )  # fmt: skip
    with torch.no_grad():  # away from the init's identity LayerNorms and zero biases
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(x)
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([1, 3])).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
def test_trains_to_the_same_gradients_without_the_private_ops(monkeypatch, impl, dtype):
    expected = _train_grads(impl, dtype)
    _hide_private_ops(monkeypatch)
    assert not hasattr(torch, "_softmax_backward_data") and not kernels.recompute_supported()
    calls = []
    monkeypatch.setattr(kernels.RecomputeAttention, "apply", lambda *a: calls.append(a))
    got = _train_grads(impl, dtype)
    assert calls == []  # the fused CPU op is gone: SDPA instead
    assert got.keys() == expected.keys() and any(n.startswith("kv_prompts") for n in got)
    for name, g in got.items():
        if dtype is None:
            torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
        else:  # another kernel (recompute) or another softmax gradient (plain) in bf16
            assert (g - expected[name]).norm() <= 0.03 * expected[name].norm(), name


def test_plain_softmax_gradient_formula_matches_the_fused_op(monkeypatch):
    """The fallback in the plain kernel's backward is exact: gradcheck in fp64."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    monkeypatch.delattr(torch, "_softmax_backward_data")
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda a, b, c: kernels.plain_attention(a, b, c, 0.5), inputs)


def test_auto_takes_sdpa_for_the_lean_kernel_without_the_fused_cpu_op(monkeypatch):
    torch.manual_seed(0)
    model = aptune.build_model(
        "vit_nano", num_classes=5, transfer_type="prompt", num_frames=4, input_size=32
    )
    lean = speed.choose_attn_impl(model, "auto", 2, torch.bfloat16, True, None)
    assert lean.impl == "recompute"  # plain's memory unknown: the lean kernel
    _hide_private_ops(monkeypatch)
    assert speed.choose_attn_impl(model, "auto", 2, torch.bfloat16, True, None).impl == "sdpa"
