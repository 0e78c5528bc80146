"""Fixtures writing checkpoint files in the real key layouts of each format.

Every file is written with the same tools the originals were (``torch.save`` of the
reference's dict layout, transformers' ``save_pretrained``), from one tiny random model, so
a test can compare what aptune loads with the tensors that went in.
"""

from __future__ import annotations

import argparse
import sys
import types
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from aptune.models.vit import VisionTransformer

#: dim 64, depth 2, heads 2, 4 frames, 32 px, tubelet 2 -> grid (2, 2, 2), 8 tokens.
TINY = dict(embed_dim=64, depth=2, num_heads=2, num_frames=4, img_size=32, tubelet_size=2)
NUM_CLASSES = 5


def tiny_model(num_classes: int = NUM_CLASSES, **kw: object) -> VisionTransformer:
    return VisionTransformer(**{**TINY, "num_classes": num_classes, **kw}).eval()  # type: ignore[arg-type]


def randomised(sd: dict[str, torch.Tensor], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values everywhere (norms and biases too) so no zero init hides a mix-up."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in sd.items()}


def backbone_sd(seed: int = 0, num_classes: int = NUM_CLASSES) -> dict[str, torch.Tensor]:
    """Our layout: patch_embed, blocks, fc_norm, head."""
    return randomised(tiny_model(num_classes).state_dict(), seed)


def train_args(**kw: object) -> argparse.Namespace:
    """What the reference's argparse puts under "args" (plain values only)."""
    base = dict(
        model="vit_nano_patch16_224",
        num_frames=4,
        input_size=32,
        tubelet_size=2,
        lr=1e-3,
        opt_betas=[0.9, 0.999],
        data_set="UCF101",
        nb_classes=NUM_CLASSES,
    )
    return argparse.Namespace(**{**base, **kw})


def reference_file(state: dict, key: str = "model", **extra: object) -> dict:
    """``{"model", "optimizer", "epoch", "scaler", "args"}`` as the reference's save_model."""
    opt = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}],
    }
    return {
        key: state,
        "optimizer": opt,
        "epoch": 3,
        "scaler": {"scale": 65536.0},
        "args": train_args(),
        **extra,
    }


@pytest.fixture
def videomae_pretrain_file(tmp_path: Path) -> tuple[Path, dict]:
    """VideoMAE pre-training checkpoint: encoder.* + encoder.norm + decoder, under "model"."""
    ours = backbone_sd(1)
    sd = {f"encoder.{k}": v for k, v in ours.items() if not k.startswith(("head.", "fc_norm."))}
    g = torch.Generator().manual_seed(2)
    sd["encoder.norm.weight"], sd["encoder.norm.bias"] = torch.ones(64), torch.zeros(64)
    sd["mask_token"] = torch.zeros(1, 1, 32)
    sd["encoder_to_decoder.weight"] = torch.randn(32, 64, generator=g)
    sd["decoder.pos_embed"] = torch.randn(1, 8, 32, generator=g)
    for name, shape in (
        ("norm1.weight", (32,)),
        ("attn.qkv.weight", (96, 32)),
        ("mlp.fc1.weight", (128, 32)),
    ):
        sd[f"decoder.blocks.0.{name}"] = torch.randn(shape, generator=g)
    sd["decoder.norm.weight"], sd["decoder.head.weight"] = torch.ones(32), torch.zeros(1536, 32)
    path = tmp_path / "checkpoint.pth"
    torch.save(reference_file(sd), path)
    return path, ours


@pytest.fixture
def videomae_finetune_file(tmp_path: Path) -> tuple[Path, dict]:
    """VideoMAE fine-tuned checkpoint: our keys under "module", 5-class head."""
    ours = backbone_sd(3)
    path = tmp_path / "finetuned.pth"
    torch.save(reference_file(ours, key="module"), path)
    return path, ours


#: Reference APT layout: prompts for blocks 1..1 (L=1), 3 tokens, head dim 32.
APT_START, APT_END, APT_TOKENS = 1, 1, 3


@pytest.fixture
def apt_reference_file(tmp_path: Path) -> tuple[Path, dict]:
    """Reference APT fine-tuned file: head_norm.*, prompt_embeddings_k/v, prompt_scale."""
    g = torch.Generator().manual_seed(4)
    raw = {k.replace("fc_norm.", "head_norm."): v for k, v in backbone_sd(4).items()}
    L = APT_END - APT_START + 1
    raw["prompt_embeddings_k"] = torch.randn(L, APT_TOKENS, 32, generator=g)
    raw["prompt_embeddings_v"] = torch.randn(L, APT_TOKENS, 32, generator=g)
    raw["prompt_scale"] = torch.rand(L, 2, APT_TOKENS, generator=g) * 2  # some < 1, some > 1
    path = tmp_path / "apt_checkpoint-99.pth"
    torch.save(reference_file(raw), path)
    return path, raw


def _fake_deepspeed_loss_scaler(monkeypatch: pytest.MonkeyPatch) -> type:
    """A class pickled under DeepSpeed's name, as its fp16 optimizer state holds one."""
    name = "deepspeed.runtime.fp16.loss_scaler"
    cls = type("DynamicLossScaler", (), {"__module__": name})
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        monkeypatch.setitem(sys.modules, ".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    sys.modules[name].DynamicLossScaler = cls  # type: ignore[attr-defined]
    return cls


@pytest.fixture
def deepspeed_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """``--enable_deepspeed`` output: checkpoint-N/mp_rank_00_model_states.pt + ``latest``.

    Written with DeepSpeed's engine layout (module + bookkeeping) and VideoMAE's client
    state; weights in fp16 as DeepSpeed's fp16 engine holds them.
    """
    ours = backbone_sd(5)
    scaler = _fake_deepspeed_loss_scaler(monkeypatch)()
    scaler.__dict__.update(cur_scale=128.0, cur_iter=120, scale_window=128, dynamic=True)
    fp16_optimizer = {
        "loss_scaler": scaler,
        "dynamic_loss_scale": True,
        "overflow": False,
        "clip_grad": 0.0,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]},
        "fp32_groups_flat": [torch.zeros(10)],
    }
    shapes = [OrderedDict((k, v.shape) for k, v in ours.items())]
    state = {
        "module": OrderedDict((k, v.half()) for k, v in ours.items()),
        "buffer_names": [],
        "optimizer": fp16_optimizer,
        "param_shapes": shapes,
        "frozen_param_shapes": None,
        "shared_params": None,
        "frozen_param_fragments": None,
        "lr_scheduler": None,
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 120,
        "global_samples": 960,
        "dp_world_size": 8,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 64, "fp16": {"enabled": True, "loss_scale": 0}},
        "ds_version": "0.14.4",
        "epoch": 7,
        "args": train_args(enable_deepspeed=True),
    }
    out = tmp_path / "output"
    for n in (3, 7):
        (out / f"checkpoint-{n}").mkdir(parents=True)
        torch.save(state, out / f"checkpoint-{n}" / "mp_rank_00_model_states.pt")
    (out / "latest").write_text("checkpoint-7")
    monkeypatch.undo()  # the reader must not find the fake deepspeed module
    return out, {k: v.half().float() for k, v in ours.items()}


@pytest.fixture(scope="session")
def ckpt() -> types.SimpleNamespace:
    """The helpers above for test modules (test dirs are not packages, so no imports)."""
    return types.SimpleNamespace(
        TINY=TINY,
        NUM_CLASSES=NUM_CLASSES,
        APT_START=APT_START,
        APT_END=APT_END,
        APT_TOKENS=APT_TOKENS,
        tiny_model=tiny_model,
        randomised=randomised,
        backbone_sd=backbone_sd,
        reference_file=reference_file,
    )
