"""Gradient checkpointing (``use_checkpoint`` / ``set_grad_checkpointing``): the same
gradients as without it for every method and attention kernel, dropout included, and
really less kept for backward.

Tiny ViT: vit_micro (D 128, depth 4, heads 4) at 4 frames x 32 px (8 tokens), so three
blocks are checkpointed (the last never is) and prompts can start after block 0.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch
import torch.nn.functional as F

import aptune
import aptune.models.vit as vit

C = 4
DROPOUT = dict(drop_path=0.1, drop=0.1)  # stochastic depth + the projections' dropout
METHODS = [
    ("prompt", dict(prompt_num_tokens=3, prompt_reparam=True, prompt_dropout=0.2)),
    ("vpt_deep", dict(vpt_num_tokens=3, vpt_dropout=0.2)),
    ("adapter", dict(adapter_dim=8)),
    ("lora", dict(lora_rank=4, lora_targets="all", lora_dropout=0.1)),
    ("linear", {}),
    ("end2end", {}),
    ("bitfit", {}),
]  # fmt: skip


def build(transfer_type: str = "prompt", use_checkpoint: bool = False, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return aptune.build_model(
        "vit_micro", num_classes=C, transfer_type=transfer_type, num_frames=4, input_size=32,
        use_checkpoint=use_checkpoint, **kw,
    )  # fmt: skip


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 4, 32, 32, generator=g), torch.tensor([0, 3])


def grads(model: torch.nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Trainable gradients of one train step, the loss under them; dropout seeded alike."""
    x, y = batch()
    torch.manual_seed(2)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
    with autocast:
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    out = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in out.values())
    return {**out, "loss": loss.detach()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        note = functools.partial("{}: {}".format, name)
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-9, msg=note)


@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
@pytest.mark.parametrize("method, options", METHODS, ids=[m for m, _ in METHODS])
def test_gradients_equal_with_and_without(method, options, impl):
    kw = dict(options, attn_impl=impl, **DROPOUT)
    plain, ckpt = build(method, False, **kw), build(method, True, **kw)
    assert_same(grads(plain), grads(ckpt))


def test_attention_dropout_recomputes_the_same_mask():
    """Dropout on the probabilities runs inside SDPA: its mask must be redrawn alike."""
    kw = dict(prompt_dropout=0.2, attn_drop_rate=0.2, **DROPOUT)
    assert_same(grads(build(use_checkpoint=False, **kw)), grads(build(use_checkpoint=True, **kw)))


@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
def test_bf16_autocast_recomputes_under_the_same_autocast(impl):
    kw = dict(prompt_reparam=True, prompt_dropout=0.2, attn_impl=impl, **DROPOUT)
    plain, ckpt = build(use_checkpoint=False, **kw), build(use_checkpoint=True, **kw)
    assert_same(grads(plain, torch.bfloat16), grads(ckpt, torch.bfloat16))


def saved_bytes(model: torch.nn.Module) -> int:
    """Bytes a training forward hands to autograd outside checkpointed blocks (parameters
    excluded): checkpointed blocks keep theirs behind their own hooks."""
    params = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if t.data_ptr() not in params:
            total += t.numel() * t.element_size()
        return t

    x, y = batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        F.cross_entropy(model(x), y).backward()
    return total


def test_checkpointing_keeps_less_for_backward_and_toggles():
    model = build(prompt_num_tokens=3)
    without = saved_bytes(model)
    model.set_grad_checkpointing()
    assert model.grad_checkpointing
    # blocks 0-2 checkpointed, block 3 (~a quarter) and the head still save their tensors
    assert saved_bytes(model) < 0.35 * without
    model.set_grad_checkpointing(False)
    assert saved_bytes(model) == without


def count_checkpoints(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = vit.checkpoint

    def counting(fn, x, i, *rest, **kw):
        calls.append(i)
        return real(fn, x, i, *rest, **kw)

    monkeypatch.setattr(vit, "checkpoint", counting)
    return calls


def test_frozen_prefix_and_last_block_are_not_checkpointed(monkeypatch):
    """APT from block 2: blocks 0-1 run without autograd, block 3 is the last."""
    calls = count_checkpoints(monkeypatch)
    model = build(prompt_start=2, use_checkpoint=True)
    grads(model)
    assert calls == [2]
    calls.clear()
    grads(build("end2end", use_checkpoint=True))
    assert calls == [0, 1, 2]


def test_eval_and_no_grad_forward_unaffected(monkeypatch):
    calls = count_checkpoints(monkeypatch)
    x, _ = batch()
    plain, ckpt = build(use_checkpoint=False).eval(), build(use_checkpoint=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(ckpt(x), plain(x), rtol=0, atol=0)
    assert calls == []
    plain.train(), ckpt.train()
    with torch.no_grad():  # dropout off: train mode without autograd is deterministic too
        torch.testing.assert_close(ckpt(x), plain(x), rtol=0, atol=0)
    assert calls == []


def test_build_model_keyword_and_default():
    assert build(use_checkpoint=True).grad_checkpointing is True
    assert build().grad_checkpointing is False
