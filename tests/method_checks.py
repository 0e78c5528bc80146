"""Checks every tuning method's tests make, whatever the backbone (imported by test modules;
``tests/`` is on the path through its conftest)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def assert_zero_init_output(model: nn.Module, plain: nn.Module, x: torch.Tensor,
                            classes: int, same: bool) -> None:  # fmt: skip
    """Untrained, a zero-init method (LoRA, AdaptFormer) computes the frozen backbone's
    function exactly and prompts do not: ``model`` equals ``plain`` (same frozen tensors,
    no method) iff ``same``."""
    own = model.state_dict()
    plain.load_state_dict({k: own[k] for k in plain.state_dict()})
    model.eval()
    plain.eval()
    with torch.no_grad():
        out = model(x)
        assert out.shape == (x.shape[0], classes)
        assert torch.equal(out, plain(x)) == same


def assert_steps_change_exactly_the_trainable(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 3
) -> None:
    """A few AdamW steps change every trainable tensor and no frozen one."""
    model.train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    changed = {k for k, v in model.named_parameters() if not torch.equal(v, before[k])}
    assert changed == {k for k, v in model.named_parameters() if v.requires_grad}


def assert_loss_halves(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       steps: int = 30, lr: float = 3e-3) -> None:  # fmt: skip
    """Training the trainable tensors on a fixed batch halves its loss."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
