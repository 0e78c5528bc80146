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
    _OWN_STORE,
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
    _OWN_STORE.clear()  # stop rank 0's store server: no server thread outlives the test


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


def torchrun(data: Path, out: Path, node: int | None = None, port: int = 0) -> list[str]:
    """2 processes: one torchrun with 2 (static rendezvous), or with ``node`` set one of
    two torchruns with 1 each meeting through c10d (what ``--nnodes 2`` does on 2 hosts)."""
    flags = apt_flags(data, out) + ["--save_ckpt_steps", "2", "--disable_eval_during_finetuning"]
    if node is None:
        launch = ["--nproc-per-node", "2"]
    else:
        launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                  "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "aptune-test"]  # fmt: skip
    return [sys.executable, "-m", "torch.distributed.run", *launch, "--max-restarts", "1",
            "--monitor-interval", "0.5", "-m", "aptune.cli", "train", *flags]  # fmt: skip


def run_elastic(
    data: Path, out: Path, kill_rank: int | None, nodes: int = 1
) -> subprocess.CompletedProcess:
    """Run to the end; with ``kill_rank``, SIGKILL that rank once after the first step
    checkpoint. Returns torchrun's exit code (the worst agent's) and the output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = free_port()
    cmds = [torchrun(data, out)] if nodes == 1 else [torchrun(data, out, n, port) for n in (0, 1)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) for c in cmds]  # fmt: skip
    if kill_rank is not None:
        deadline = time.time() + 400
        while not any(out.glob("checkpoint-0000-step*/COMPLETE")):
            assert all(p.poll() is None for p in procs), procs[0].communicate()[0][-3000:]
            assert time.time() < deadline, "no step checkpoint within 400 s"
            time.sleep(0.05)
        pids = [worker_pid(p.pid, kill_rank) for p in procs]
        pid = next(p for p in pids if p is not None)
        os.kill(pid, signal.SIGKILL)
    texts = [p.communicate(timeout=900)[0] for p in procs]
    code = max(abs(p.returncode) for p in procs)
    return subprocess.CompletedProcess(cmds[0], code, "\n".join(texts), "")


@pytest.fixture(scope="module")
def whole_two_ranks(square_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    res = run_elastic(square_data, out, None)
    assert res.returncode == 0, res.stdout[-3000:]
    return out


@pytest.mark.slow
def test_killed_rank_restarts_and_ends_with_the_uninterrupted_weights(
    square_data, whole_two_ranks, tmp_path
):
    killed = run_elastic(square_data, tmp_path / "killed", kill_rank=1)
    assert killed.returncode == 0, killed.stdout[-3000:]
    assert "resumed from" in killed.stdout and "2 process(es)" in killed.stdout
    assert_same_weights(whole_two_ranks, tmp_path / "killed")


@pytest.mark.slow
def test_two_c10d_nodes_survive_a_killed_rank(square_data, whole_two_ranks, tmp_path):
    """``--nnodes 2 --rdzv-backend c10d``: two agents, restart counts may differ."""
    killed = run_elastic(square_data, tmp_path / "killed", kill_rank=1, nodes=2)
    assert killed.returncode == 0, killed.stdout[-3000:]
    assert "resumed from" in killed.stdout
    assert_same_weights(whole_two_ranks, tmp_path / "killed")
