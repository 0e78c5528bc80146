"""Parameter groups, optimiser choice, schedules, EMA and clipping against the recipe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import aptune
from aptune.engine.optim import (
    ModelEma,
    apply_schedules,
    build_optimizer,
    clip_gradients,
    cosine_schedule,
    param_groups,
    scaled_lr,
)


def nano(transfer_type: str = "prompt", **kw) -> nn.Module:
    torch.manual_seed(0)
    return aptune.build_model(
        "vit_nano", num_classes=4, num_frames=4, input_size=32, transfer_type=transfer_type, **kw
    )


def membership(groups: list[dict], model: nn.Module) -> dict[str, dict]:
    """name -> the group holding it; asserts every param appears at most once."""
    names = {id(p): n for n, p in model.named_parameters()}
    where: dict[str, dict] = {}
    for g in groups:
        for p in g["params"]:
            name = names[id(p)]
            assert name not in where, f"{name} in two groups"
            where[name] = g
    return where


def test_groups_apt_decay_membership():
    model = nano(prompt_reparam=True)
    where = membership(param_groups(model, weight_decay=0.05), model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(where) == trainable  # every trainable once, frozen never
    decayed = {n for n, g in where.items() if g["weight_decay"] > 0}
    assert decayed == {
        "head.weight",
        "kv_prompts.prompt_embeddings_k",
        "kv_prompts.prompt_embeddings_v",
        "kv_prompts.prompt_scale",  # (L, 2, n): decays, as in the reference
    }
    assert where["fc_norm.weight"]["name"] == "no_decay"
    assert all(g["lr_scale"] == 1.0 for g in where.values())


def test_groups_end2end_decay_membership_and_extra_names():
    model = nano("end2end")
    groups = param_groups(model, 0.05, no_decay_names=["blocks.0.mlp.fc1.weight"])
    where = membership(groups, model)
    assert set(where) == {n for n, _ in model.named_parameters()}
    no_decay = {n for n, g in where.items() if g["weight_decay"] == 0}
    for name in (
        "blocks.0.attn.q_bias",
        "blocks.1.attn.v_bias",
        "blocks.0.norm1.weight",
        "fc_norm.bias",
        "patch_embed.proj.bias",
        "head.bias",
        "blocks.0.mlp.fc1.weight",  # named in no_decay_names
    ):
        assert name in no_decay
    for name in ("patch_embed.proj.weight", "blocks.1.attn.qkv.weight", "head.weight"):
        assert where[name]["weight_decay"] == 0.05


def test_layer_decay_scales():
    model = nano("end2end")  # depth 2: layers 0 (embed), 1, 2 (blocks), 3 (head)
    where = membership(param_groups(model, 0.05, layer_decay=0.75), model)
    assert where["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.75**3)
    assert where["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.75**2)
    assert where["blocks.1.mlp.fc2.weight"]["lr_scale"] == pytest.approx(0.75)  # last block
    assert where["head.weight"]["lr_scale"] == 1.0
    assert where["fc_norm.weight"]["lr_scale"] == 1.0
    assert where["blocks.0.norm1.weight"]["name"] == "layer_1_no_decay"
    apt = nano()
    apt_where = membership(param_groups(apt, 0.05, layer_decay=0.75), apt)
    assert apt_where["kv_prompts.prompt_embeddings_k"]["lr_scale"] == 1.0  # with the head


def test_build_optimizer_types_and_errors():
    model = nano()
    sgd = build_optimizer(model, "sgd", lr=0.1, weight_decay=0.0, momentum=0.8)
    assert type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.8
    mom = build_optimizer(model, "momentum", lr=0.1)
    assert not mom.param_groups[0]["nesterov"]
    adamw = build_optimizer(model, "adamw", lr=2e-3, opt_eps=1e-6, opt_betas=(0.9, 0.95))
    assert type(adamw) is torch.optim.AdamW
    g = adamw.param_groups[0]
    assert g["betas"] == (0.9, 0.95) and g["eps"] == 1e-6 and g["lr"] == 2e-3
    assert type(build_optimizer(model, "adam")) is torch.optim.Adam
    with pytest.raises(ValueError, match="--opt 'lamb'.*adamw"):
        build_optimizer(model, "lamb")


def test_cosine_schedule_warmup_and_decay():
    s = cosine_schedule(
        1.0, 0.01, epochs=5, niter_per_ep=4, warmup_epochs=1, start_warmup_value=0.1
    )
    assert len(s) == 20
    np.testing.assert_allclose(s[:4], [0.1, 0.4, 0.7, 1.0])  # linspace(0.1, 1, 4)
    assert s[4] == 1.0  # cosine starts at the peak
    i = 7  # step 11 = cosine step 7 of 16
    assert s[4 + i] == pytest.approx(0.01 + 0.495 * (1 + math.cos(math.pi * i / 16)))
    assert s[-1] == pytest.approx(0.01, abs=0.01)
    assert np.all(np.diff(s[4:]) < 0)  # monotone decay after warmup
    w = cosine_schedule(1.0, 0.0, epochs=5, niter_per_ep=4, warmup_epochs=3, warmup_steps=2)
    np.testing.assert_allclose(w[:2], [0.0, 1.0])  # warmup_steps wins over warmup_epochs
    assert len(cosine_schedule(1.0, 0.0, 2, 3, warmup_steps=2)) == 6  # without warmup_epochs
    short = cosine_schedule(1.0, 0.0, epochs=1, niter_per_ep=3, warmup_epochs=2)
    np.testing.assert_allclose(short, [0.0, 0.2, 0.4])  # warmup longer than the run: cut


def test_scaled_lr_and_apply_schedules():
    assert scaled_lr(0.05, 8, 2, 4) == pytest.approx(0.05 * 64 / 256)
    model = nano("end2end")
    opt = build_optimizer(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    decays = [g["weight_decay"] > 0 for g in opt.param_groups]
    apply_schedules(opt, 1, [1.0, 0.2], [0.05, 0.03])
    for g, decays_now in zip(opt.param_groups, decays):
        assert g["lr"] == pytest.approx(0.2 * g["lr_scale"])
        assert g["weight_decay"] == (0.03 if decays_now else 0.0)  # no-decay groups stay 0


def test_model_ema_maths():
    net = nn.Linear(2, 1, bias=False)
    net.weight.data.fill_(1.0)
    ema = ModelEma(net, decay=0.9)
    assert not any(p.requires_grad for p in ema.module.parameters())
    net.weight.data.fill_(3.0)
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9 * 1 + 0.1 * 3))
    ema.update(net)
    torch.testing.assert_close(ema.module.weight, torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3))
    fresh = ModelEma(nn.Linear(2, 1, bias=False))
    fresh.load_state_dict(ema.state_dict())
    torch.testing.assert_close(fresh.module.weight, ema.module.weight)


def test_model_ema_leaves_frozen_tensors_at_their_copy():
    """Frozen parameters cannot change: the EMA's copy from construction is exact, and a
    step averages the trainable tensors only."""
    net = nn.Linear(2, 1)
    net.weight.requires_grad_(False)
    ema = ModelEma(net, decay=0.5)
    frozen = ema.module.weight.detach().clone()
    net.bias.data.add_(2.0)
    ema.update(net)
    assert torch.equal(ema.module.weight, frozen)
    torch.testing.assert_close(ema.module.bias, net.bias - 1.0)


def test_clip_gradients():
    p = nn.Parameter(torch.zeros(2))
    assert clip_gradients([p], 1.0) is None  # no gradients yet
    p.grad = torch.tensor([3.0, 4.0])
    norm = clip_gradients([p], None)
    assert isinstance(norm, torch.Tensor) and float(norm) == pytest.approx(5.0)  # on device
    assert p.grad.tolist() == [3.0, 4.0]
    assert float(clip_gradients([p], 1.0)) == pytest.approx(5.0)
    torch.testing.assert_close(p.grad.norm(), torch.tensor(1.0), rtol=1e-4, atol=1e-4)


def test_head_lr_scale_moves_only_the_classifier():
    model = nano(prompt_reparam=True)
    default = param_groups(model, weight_decay=0.05)
    assert [g["name"] for g in default] == [
        g["name"] for g in param_groups(model, 0.05, head_lr_scale=1.0)
    ]
    opt = build_optimizer(model, lr=2.0, weight_decay=0.05, head_lr_scale=0.1)
    where = membership(opt.param_groups, model)
    for name in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
        assert where[name]["lr"] == pytest.approx(0.2) and where[name]["name"].endswith("_head")
    for name in ("kv_prompts.prompt_embeddings_k", "kv_prompts.prompt_scale"):
        assert where[name]["lr"] == pytest.approx(2.0)
    assert where["head.weight"]["weight_decay"] == 0.05  # decay kept per group
    assert where["head.bias"]["weight_decay"] == 0.0
    apply_schedules(opt, 0, [1.0], [0.05])  # the schedule keeps the ratio
    assert where["head.weight"]["lr"] == pytest.approx(0.1)
    assert where["kv_prompts.prompt_embeddings_v"]["lr"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="--head_lr_scale must be > 0"):
        build_optimizer(model, lr=1.0, head_lr_scale=0.0)


def test_head_lr_scale_flag_reaches_the_optimizer():
    from aptune.cli.train import parse_train_args
    from aptune.engine.builders import build_train_step
    from aptune.engine.distributed import DistInfo

    assert parse_train_args([]).optim.head_lr_scale == 1.0
    argv = ["--head_lr_scale", "0.25", "--lr", "2.56", "--batch_size", "1", "--mixup", "0",
            "--cutmix", "0", "--epochs", "1", "--warmup_epochs", "0"]  # fmt: skip
    args = parse_train_args(argv)
    model = nano(prompt_reparam=True)
    step = build_train_step(args, model, model, DistInfo(), steps=4)
    where = membership(step.optimizer.param_groups, model)
    assert where["head.weight"]["lr_scale"] == 0.25
    assert where["kv_prompts.prompt_embeddings_k"]["lr_scale"] == 1.0
