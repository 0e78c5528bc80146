"""Checkpoint folders: round trips, exact resume, atomicity, pruning and load errors."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

import aptune
from aptune.engine.checkpoint import (
    ResumeError,
    capture_rng,
    find_latest_checkpoint,
    load_model_weights,
    load_training_state,
    restore_rng,
    save_best,
    save_model_weights,
    save_training_state,
)
from aptune.engine.optim import ModelEma, build_optimizer
from aptune.models.checkpoint_io import CheckpointError

CLIP = (2, 3, 4, 32, 32)  # (B, C, T, H, W)


def nano(seed: int, transfer_type: str = "prompt", **kw) -> torch.nn.Module:
    torch.manual_seed(seed)
    kw = {"num_classes": 4, "num_frames": 4, "input_size": 32, **kw}
    return aptune.build_model("vit_nano", transfer_type=transfer_type, **kw)


def train_step(model, opt, x: torch.Tensor, y: torch.Tensor) -> None:
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(CLIP, generator=g), torch.tensor([0, 3])


def test_round_trip_trainable_only_and_exact_resume(tmp_path: Path, data):
    x, y = data
    model = nano(0, prompt_reparam=True)
    pretrained = tmp_path / "pretrained.safetensors"  # stands in for the VideoMAE checkpoint
    save_model_weights(pretrained, model, trainable_only=False)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.05)
    ema = ModelEma(model, decay=0.5)
    train_step(model, opt, x, y)
    ema.update(model)
    folder = save_training_state(tmp_path, 0, model, opt, ema=ema, config={"lr": 0.05},
                                 extra={"best": {"top1": np.float64(12.5)}, "step": 1})  # fmt: skip
    assert folder == tmp_path / "checkpoint-0000"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == trainable  # no backbone tensor
        assert f.metadata()["format"] == "aptune" and f.metadata()["trainable_only"] == "true"
    with safe_open(str(folder / "ema.safetensors"), "pt") as f:
        assert set(f.keys()) == trainable
    state = torch.load(folder / "state.pt", weights_only=True)  # plain types only
    assert state["extra"]["best"]["top1"] == 12.5

    # uninterrupted: one more step, then note the RNG stream
    expected_rng = capture_rng()
    model.eval()
    train_step(model, opt, x, y)
    with torch.no_grad():
        want = model.eval()(x)

    # resume into a model built with another seed from the same pre-trained backbone
    fresh = nano(7, prompt_reparam=True)
    load_model_weights(pretrained, fresh)
    with torch.no_grad():
        for p in fresh.parameters():
            if p.requires_grad:
                p.normal_()  # differs from the saved trainable tensors
    fresh_opt = build_optimizer(fresh, lr=1e-2, weight_decay=0.05)
    fresh_ema = ModelEma(fresh, decay=0.5)
    torch.rand(5)  # advance the stream: restore must rewind it
    out = load_training_state(folder, fresh, fresh_opt, ema=fresh_ema)
    assert torch.equal(out.pop("rng")["torch"], expected_rng["torch"])
    assert out == {"epoch": 0, "extra": {"best": {"top1": 12.5}, "step": 1}, "config": {"lr": 0.05}}
    torch.testing.assert_close(fresh_ema.module.head.weight, ema.module.head.weight)
    assert torch.equal(torch.get_rng_state(), expected_rng["torch"])
    fresh.eval()
    train_step(fresh, fresh_opt, x, y)
    with torch.no_grad():
        got = fresh(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_rng_capture_restore():
    state = capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_full_checkpoint_and_weights_file(tmp_path: Path, data):
    x, _ = data
    model = nano(0, "end2end").eval()
    folder = save_training_state(tmp_path, 2, model, trainable_only=False)
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(model.state_dict())
    other = nano(7, "end2end").eval()
    load_training_state(folder, other, restore_rng=False)
    torch.testing.assert_close(other(x), model(x))
    save_model_weights(tmp_path / "w.safetensors", model, trainable_only=True, metadata={"a": 1})
    third = nano(8, "end2end").eval()
    names = load_model_weights(tmp_path / "w.safetensors", third)
    assert set(names) == set(dict(model.named_parameters()))
    assert not list(tmp_path.glob(".tmp-*"))


def _complete(tmp_path: Path, model, epoch: int) -> Path:
    return save_training_state(tmp_path, epoch, model, keep_last=0)


def test_half_written_checkpoints_are_ignored(tmp_path: Path, caplog):
    model = nano(0)
    good = _complete(tmp_path, model, 2)
    (tmp_path / ".tmp-checkpoint-abcd").mkdir()  # killed while writing
    assert find_latest_checkpoint(tmp_path) == good
    # a later folder without its COMPLETE marker
    bad = _complete(tmp_path, model, 3)
    (bad / "COMPLETE").unlink()
    assert find_latest_checkpoint(tmp_path) == good
    assert "checkpoint-0003" in caplog.text
    # ... and one with a truncated model.safetensors
    bad = _complete(tmp_path, model, 4)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert find_latest_checkpoint(tmp_path) == good
    with pytest.raises(ResumeError, match="checkpoint-0004"):
        load_training_state(bad, model)
    assert find_latest_checkpoint(tmp_path / "nothing-here") is None


def test_keep_last_and_best(tmp_path: Path, monkeypatch):
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    model = nano(0)
    save_best(tmp_path, 0, model, extra={"best": 1.0})
    for epoch in range(4):
        save_training_state(tmp_path, epoch, model, keep_last=2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint-0002", "checkpoint-0003", "checkpoint-best"]
    best = save_best(tmp_path, 3, model, extra={"best": 2.0})  # replaces the old best
    assert load_training_state(best, model, restore_rng=False)["extra"] == {"best": 2.0}
    assert calls == [True]  # state.pt is never unpickled with code execution allowed
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0003"
    assert not list(tmp_path.glob(".tmp-*"))


def test_mismatched_checkpoint_names_the_file(tmp_path: Path):
    folder = save_training_state(tmp_path, 0, nano(0, prompt_num_tokens=2))
    with pytest.raises(ResumeError, match=r"checkpoint-0000/model\.safetensors.*shape"):
        load_training_state(folder, nano(0, prompt_num_tokens=3))
    with pytest.raises(ResumeError, match="missing.*prompt_scale"):
        load_training_state(folder, nano(0, prompt_reparam=True))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model_weights(folder, nano(0, "end2end", num_classes=5))
    model = nano(0, "end2end")
    opt = build_optimizer(model, weight_decay=0.05)
    folder = save_training_state(tmp_path, 1, model, opt, trainable_only=False)
    other_opt = build_optimizer(model, weight_decay=0.05, layer_decay=0.5)  # other groups
    with pytest.raises(ResumeError, match="optimizer"):
        load_training_state(folder, model, other_opt)
