"""Verified checkpoints (sha256 per file) and full disks: corrupt folders are named and
skipped, a refused write is one line and leaves the previous checkpoint intact."""

from __future__ import annotations

import errno
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from engine_support import apt_flags, assert_same_weights, train_until_saved

import aptune
import aptune.engine.checkpoint as ckpt_mod
import aptune.engine.run
from aptune.cli import main
from aptune.engine.checkpoint import (
    CheckpointWriteError,
    ResumeError,
    find_latest_checkpoint,
    latest_verified,
    save_training_state,
)
from aptune.engine.integrity import status
from aptune.engine.optim import build_optimizer
from aptune.engine.run import run_checkpoint


def nano() -> torch.nn.Module:
    torch.manual_seed(0)
    return aptune.build_model("vit_nano", transfer_type="prompt", num_classes=4,
                              num_frames=4, input_size=32)  # fmt: skip


def flip_a_byte(path: Path) -> None:
    """Same size, other bytes: what sizes alone never notice."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_newest_is_named_and_the_next_newest_is_used(tmp_path, caplog):
    model = nano()
    opt = build_optimizer(model, lr=1e-2)
    for epoch in range(3):
        save_training_state(tmp_path, epoch, model, opt, keep_last=0)
    flip_a_byte(tmp_path / "checkpoint-0002" / "state.pt")
    assert status(tmp_path / "checkpoint-0001") == "verified (sha256)"
    assert "sha256 differs" in status(tmp_path / "checkpoint-0002")
    caplog.set_level("WARNING", logger="aptune")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-0001"
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "checkpoint-0002" in warned[0] and "corrupt" in warned[0]
    for epoch in (0, 1):
        flip_a_byte(tmp_path / f"checkpoint-{epoch:04d}" / "model.safetensors")
    with pytest.raises(ResumeError, match="no verified checkpoint left.*checkpoint-0002"):
        latest_verified(tmp_path)  # stop, rather than silently train from scratch


def test_corrupt_checkpoint_resume_falls_back_and_ends_identical(
    square_data, uninterrupted, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "run"
    train_until_saved(apt_flags(square_data, out, workers=1), monkeypatch, epoch=1)
    flip_a_byte(out / "checkpoint-0001" / "model.safetensors")  # the silent case
    caplog.set_level("INFO", logger="aptune")
    assert main(["train", *apt_flags(square_data, out, workers=1)]) == 0
    text = [r.getMessage() for r in caplog.records]
    assert any("checkpoint-0001" in t and "sha256 differs" in t for t in text)
    assert any(t.startswith("resumed from") and "checkpoint-0000" in t for t in text)
    assert_same_weights(uninterrupted, out)


def test_load_run_and_info_verify(trained_run, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    newest = sorted(run.glob("checkpoint-0*"))[-1]
    flip_a_byte(newest / "model.safetensors")
    _, folder = run_checkpoint(run, "last")  # eval and predict load through it
    assert folder != newest and folder.name.startswith("checkpoint-0")
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{newest.name}: corrupt" in out and f"{folder.name}: verified (sha256)" in out
    flip_a_byte(run / "checkpoint-best" / "config.json")
    assert main(["eval", str(run), "--which", "best"]) == 2
    assert "checkpoint-best" in capsys.readouterr().err


def test_resume_path_that_does_not_exist_says_not_found(square_data, tmp_path, capsys):
    flags = apt_flags(square_data, tmp_path / "run") + ["--resume", str(tmp_path / "nope")]
    assert main(["train", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "not found" in err[-1] and "nope" in err[-1] and "Traceback" not in "".join(err)


def test_injected_enospc_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = nano()
    good = save_training_state(tmp_path, 0, model)

    def no_space(*a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_mod.torch, "save", no_space)
    with pytest.raises(CheckpointWriteError) as e:
        save_training_state(tmp_path, 1, model)
    msg = str(e.value)
    assert "\n" not in msg and "checkpoint-0001" in msg and "needs" in msg and "free" in msg
    assert f"previous checkpoint {good} is intact" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0000"]  # no .tmp-*
    assert status(good) == "verified (sha256)"


def test_enospc_during_training_exits_non_zero_without_traceback(
    square_data, tmp_path, monkeypatch, capsys
):
    real, calls = ckpt_mod._write_folder, []

    def fail_second(folder, *a, **kw):
        calls.append(folder)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(folder, *a, **kw)

    monkeypatch.setattr(ckpt_mod, "_write_folder", fail_second)
    out = tmp_path / "run"
    assert main(["train", *apt_flags(square_data, out), "--disable_eval_during_finetuning"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "No space left" in err and "checkpoint-0000 is intact" in err
    assert sorted(p.name for p in out.glob("*checkpoint*")) == ["checkpoint-0000"]


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 512 KB tmpfs (root only; skipped elsewhere)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=False)


def test_small_tmpfs_free_space_check_and_real_enospc(tiny_tmpfs, monkeypatch):
    model = nano()  # full state: ~780 KB, more than the tmpfs holds
    good = save_training_state(tiny_tmpfs, 0, model, trainable_only=True)  # a few KB
    with pytest.raises(CheckpointWriteError, match="not enough free space"):
        save_training_state(tiny_tmpfs, 1, model, trainable_only=False)
    monkeypatch.setattr(ckpt_mod, "estimate_bytes", lambda *a: 0)  # let the kernel refuse
    with pytest.raises(CheckpointWriteError, match="No space left") as e:
        save_training_state(tiny_tmpfs, 1, model, trainable_only=False)
    assert f"previous checkpoint {good} is intact" in str(e.value)
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["checkpoint-0000"]
    assert status(good) == "verified (sha256)"
