"""Preemption: a stop signal ends the run after the current step with a checkpoint and
exit 128+signum; rerunning the same command ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_support import apt_flags, assert_same_weights, signal_at_check

from aptune.cli import main
from aptune.engine.preempt import StopSignals, exit_code


def epoch_losses(out: Path) -> list[float]:
    lines = (out / "log.txt").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if line.strip()]


def test_second_ctrl_c_raises_at_once_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.signum == signal.SIGUSR1  # recorded, nothing raised
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGUSR1  # the first signal is the one reported
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after a stop request: now
    assert signal.getsignal(signal.SIGTERM) is before
    assert exit_code(signal.SIGTERM) == 143


def test_signal_mid_epoch_checkpoints_then_resume_is_bit_identical(
    square_data, uninterrupted, tmp_path, monkeypatch, caplog
):
    """SIGUSR1 lands during step 3 of epoch 1 (16 steps per epoch); the resumed run skips
    the consumed batches, and its weights and epoch-1 loss equal the uninterrupted run's
    (which used --num_workers 1: items are seeded by position, not by worker)."""
    out = tmp_path / "run"
    flags = apt_flags(square_data, out, workers=0) + ["--save_ckpt_steps", "5", "--keep_ckpts", "2"]
    # 16 steps, the end-of-epoch check, 2 steps of epoch 1: step 3 is the one that sees it
    signal_at_check(monkeypatch, 19, signal.SIGUSR1)
    caplog.set_level("INFO", logger="aptune")
    with pytest.raises(SystemExit) as stopped:
        main(["train", *flags])
    assert stopped.value.code == 128 + signal.SIGUSR1
    # --keep_ckpts 2: the step checkpoints 5, 10, 15 of epoch 0 are gone
    names = sorted(p.name for p in out.glob("checkpoint-*") if p.name != "checkpoint-best")
    assert names == ["checkpoint-0000", "checkpoint-0001-step000003"]
    said = [r.getMessage() for r in caplog.records if "stopped by SIGUSR1" in r.getMessage()]
    assert len(said) == 1 and "checkpoint-0001-step000003" in said[0]
    assert len(epoch_losses(out)) == 1

    monkeypatch.undo()
    caplog.clear()
    assert main(["train", *flags]) == 0
    assert any("then 3 steps of epoch 1" in r.getMessage() for r in caplog.records)
    assert_same_weights(uninterrupted, out)
    assert epoch_losses(out) == epoch_losses(uninterrupted)  # the split epoch too


@pytest.mark.slow
def test_sigterm_to_a_real_process_exits_143_and_resumes(square_data, uninterrupted, tmp_path):
    out = tmp_path / "killed"
    flags = apt_flags(square_data, out, workers=1) + ["--save_ckpt_steps", "1"]
    cmd = [sys.executable, "-m", "aptune.cli", "train", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    deadline = time.time() + 300
    while not any(out.glob("checkpoint-0000-step*/COMPLETE")):
        assert proc.poll() is None, "training ended before its first step checkpoint"
        assert time.time() < deadline, "no step checkpoint within 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    line = [x for x in err.splitlines() if "stopped by SIGTERM" in x]
    assert len(line) == 1 and "saved" in line[0] and "Traceback" not in err
    assert not (out / "metrics.json").exists()
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr
    assert_same_weights(uninterrupted, out)
