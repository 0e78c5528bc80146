"""Killed runs resume to exactly the weights of an uninterrupted run (same seed, CPU)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from engine_support import apt_flags, assert_same_weights, train_until_saved

from aptune.cli import main


@pytest.mark.slow
def test_sigkill_then_restart_gives_the_same_final_weights(square_data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "aptune.cli", "train", *apt_flags(square_data, out, workers=1)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not (out / "checkpoint-0000" / "COMPLETE").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists()
    restarted = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert "resumed from" in restarted.stderr
    assert_same_weights(uninterrupted, out)
    epochs = [line for line in (out / "log.txt").read_text().splitlines() if line.strip()]
    assert len(epochs) == 3  # re-done epochs are logged once


def test_half_written_checkpoint_is_ignored_on_resume(
    square_data, uninterrupted, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "run"
    # the process dies right after its first complete checkpoint
    train_until_saved(apt_flags(square_data, out, workers=1), monkeypatch, epoch=0)
    # what a kill during the next save leaves: a temp folder and a folder without marker
    half = out / "checkpoint-0001"
    shutil.copytree(out / "checkpoint-0000", half)
    (half / "COMPLETE").unlink()
    data = (half / "model.safetensors").read_bytes()
    (half / "model.safetensors").write_bytes(data[: len(data) // 2])
    shutil.copytree(out / "checkpoint-0000", out / ".tmp-checkpoint-crash")
    caplog.set_level("INFO", logger="aptune")
    assert main(["train", *apt_flags(square_data, out, workers=1)]) == 0
    assert "checkpoint-0000" in " ".join(r.getMessage() for r in caplog.records if
                                         "resumed" in r.getMessage())  # fmt: skip
    assert_same_weights(uninterrupted, out)
