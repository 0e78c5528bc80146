"""Elastic restarts: a fresh store per attempt (stale peer addresses hung gloo's connect),
bounded waits that end in one line, and a killed rank under torchrun --max-restarts 1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist
from engine_support import apt_flags, assert_same_weights

from aptune.engine.distributed import (
    STORE_KEY,
    DistTimeoutError,
    _attempt_store,
    init_distributed,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stale_address_from_the_previous_attempt_is_skipped(monkeypatch):
    """What a restart leaves in the agent's store: rank 0's old, dead address."""
    port = free_port()
    agent = dist.TCPStore("127.0.0.1", port, 2, True, timedelta(seconds=10),
                          wait_for_workers=False)  # fmt: skip
    agent.set(STORE_KEY, f"127.0.0.1:{free_port()}:attempt-0")  # nobody listens there
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    got: dict = {}
    rank1 = threading.Thread(target=lambda: got.update(store=_attempt_store(1, 2, 20.0)))
    rank1.start()
    time.sleep(1.0)  # rank 1 is retrying the stale address by now
    own = _attempt_store(0, 2, 20.0)
    rank1.join(30)
    assert not rank1.is_alive()
    own.set("from rank 0", "fresh")
    assert got["store"].get("from rank 0") == b"fresh"  # rank 1 joined this attempt's store


def test_a_missing_rank_ends_in_one_line_within_the_timeout(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))  # rank 0 never starts
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    started = time.monotonic()
    with pytest.raises(DistTimeoutError) as e:
        init_distributed("cpu", timeout=2.0)
    assert time.monotonic() - started < 60
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("rank 1/2: waited for the process group")
    assert "--dist_timeout 2" in msg


def worker_pid(parent: int, rank: int) -> int | None:
    """The training process of ``rank`` among the children of torchrun ``parent``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


def torchrun(data: Path, out: Path) -> list[str]:
    flags = apt_flags(data, out) + ["--save_ckpt_steps", "2", "--disable_eval_during_finetuning"]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--max-restarts", "1", "--monitor-interval", "0.5", "-m", "aptune.cli", "train",
            *flags]  # fmt: skip


def run_elastic(data: Path, out: Path, kill_rank: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(torchrun(data, out), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)  # fmt: skip
    if kill_rank is not None:
        deadline = time.time() + 400
        while not any(out.glob("checkpoint-0000-step*/COMPLETE")):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "no step checkpoint within 400 s"
            time.sleep(0.05)
        pid = worker_pid(proc.pid, kill_rank)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
    text, _ = proc.communicate(timeout=900)
    return subprocess.CompletedProcess(proc.args, proc.returncode, text, "")


@pytest.mark.slow
def test_killed_rank_restarts_and_ends_with_the_uninterrupted_weights(square_data, tmp_path):
    whole = run_elastic(square_data, tmp_path / "whole", None)
    assert whole.returncode == 0, whole.stdout[-3000:]
    killed = run_elastic(square_data, tmp_path / "killed", kill_rank=1)
    assert killed.returncode == 0, killed.stdout[-3000:]
    assert "resumed from" in killed.stdout and "2 process(es)" in killed.stdout
    assert_same_weights(tmp_path / "whole", tmp_path / "killed")
