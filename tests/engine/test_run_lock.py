"""One writer per run folder (``engine/run_lock.py``): a live holder refuses a second run in
one line, a gone one (dead pid here, old heartbeat from another host) is taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from engine_support import apt_flags

from aptune.engine.run_lock import LOCK_NAME, STALE_AFTER_S, RunLock, RunLockedError

HOST = socket.gethostname()


def write_lock(folder: Path, host: str, pid: int, heartbeat_ago: float) -> Path:
    """A lock file as another run would have left it."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {"host": host, "pid": pid, "pid_start": None, "started": int(now - 3600),
              "heartbeat": int(now - heartbeat_ago), "token": "x"}  # fmt: skip
    (folder / LOCK_NAME).write_text(json.dumps(record))
    return folder / LOCK_NAME


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_lock_file_names_this_process_and_goes_on_release(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        record = json.loads(lock.path.read_text())
        assert (record["host"], record["pid"]) == (HOST, os.getpid())
        assert record["heartbeat"] >= record["started"] > 0
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert [p.name for p in (tmp_path / "run").iterdir()] == []  # no temporary files left


def test_a_held_lock_refuses_in_one_line_naming_the_holder(tmp_path):
    with RunLock(tmp_path), pytest.raises(RunLockedError) as e:
        RunLock(tmp_path).acquire()
    msg = str(e.value)
    assert "\n" not in msg and f"pid {os.getpid()} on {HOST}" in msg
    assert "heartbeat" in msg and "use another --output_dir" in msg


def test_a_dead_pid_on_this_host_is_taken_over_with_a_log_line(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, HOST, pid, heartbeat_ago=1)
    with caplog.at_level(logging.WARNING, logger="aptune"), RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    said = [r.getMessage() for r in caplog.records if "took over" in r.getMessage()]
    assert len(said) == 1 and f"pid {pid} on {HOST}" in said[0]


def test_a_reused_pid_is_not_the_holder(tmp_path):
    """A lock naming this very pid that this process does not hold (a restarted container)
    and a live pid whose start time differs are both gone holders."""
    write_lock(tmp_path / "a", HOST, os.getpid(), heartbeat_ago=1)
    with RunLock(tmp_path / "a"):
        pass
    lock = write_lock(tmp_path / "b", HOST, os.getppid(), heartbeat_ago=1)
    record = json.loads(lock.read_text())
    lock.write_text(json.dumps({**record, "pid_start": -1}))
    with RunLock(tmp_path / "b"):
        pass


def test_another_host_refuses_while_its_heartbeat_is_fresh(tmp_path):
    write_lock(tmp_path, "node-17", 4242, heartbeat_ago=20)
    with pytest.raises(RunLockedError, match=r"pid 4242 on node-17 since .* 2\ds ago"):
        RunLock(tmp_path).acquire()
    write_lock(tmp_path, "node-17", 4242, heartbeat_ago=STALE_AFTER_S + 60)
    with RunLock(tmp_path) as lock:
        assert json.loads(lock.path.read_text())["host"] == HOST


HOLD_AND_FORK = """
import os, sys, time
from aptune.engine.run_lock import RunLock
lock = RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
print(child, flush=True)
time.sleep(60)
"""


def test_a_forked_worker_does_not_keep_a_killed_runs_lock(tmp_path):
    """DataLoader workers are forked: the SIGKILLed parent's lock must not live on in them."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_AND_FORK, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(proc.stdout.readline())
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with RunLock(tmp_path) as lock:
            assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
def test_a_second_train_into_a_training_run_is_refused_and_the_first_is_unharmed(
    square_data, tmp_path
):
    out = tmp_path / "run"
    flags = apt_flags(square_data, out) + ["--epochs", "10"]  # long enough to be refused
    cmd = [sys.executable, "-m", "aptune.cli", "train", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env)  # fmt: skip
    deadline = time.time() + 120
    while not (out / LOCK_NAME).exists():
        assert first.poll() is None and time.time() < deadline, "the first run took no lock"
        time.sleep(0.05)
    started = time.time()
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    took = time.time() - started
    assert first.poll() is None, "the first run ended before the second was refused"
    assert second.returncode == 2, second.stderr[-2000:]
    errors = [x for x in second.stderr.splitlines() if x.startswith("aptune: error:")]
    assert len(errors) == 1 and f"pid {first.pid} on {HOST}" in errors[0]
    assert "Traceback" not in second.stderr and took < 60
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert (out / "metrics.json").exists() and not (out / LOCK_NAME).exists()
    assert len((out / "log.txt").read_text().splitlines()) == 10  # each epoch logged once


@pytest.mark.slow
def test_a_killed_runs_lock_is_taken_over_by_the_rerun(square_data, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aptune.cli", "train", *apt_flags(square_data, out, workers=1)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 240
    while not (out / "checkpoint-0000" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # its DataLoader worker may outlive it a moment
    proc.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"took over the lock of pid {proc.pid} on {HOST}" in again.stderr
    assert "resumed from" in again.stderr and not (out / LOCK_NAME).exists()
