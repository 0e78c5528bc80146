"""One writer per run folder: ``RUN/.lock`` names the process that trains into it.

Two runs into one folder would prune, overwrite and resume from each other's checkpoints.
So a training run (rank 0 under DDP) holds ``RUN/.lock`` for its whole life: one JSON
record (host, pid, the pid's start time, started, heartbeat) that appears complete
(written to a temporary file, then hard-linked into place) and is held with ``flock``
where the file system has it. A second run stops at once with one line naming the holder.

A lock whose holder is gone is taken over with a log line, so ``kill -9``, preemption and
resume work as before: on this host the holder is gone when its pid is dead (or a zombie,
or reused by a process that started later); from another host, where ``flock`` on a shared
file system may be unreliable and a pid means nothing here, when its heartbeat (rewritten
every ``HEARTBEAT_S``) is older than ``STALE_AFTER_S``. A ``flock`` held by anyone always
means the holder is alive. Read-only commands (eval, predict, info, report, export) never
take the lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import threading
import time
from pathlib import Path

from aptune.config import ConfigError

try:  # not on Windows: the heartbeat and pid rules still work there
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger("aptune")

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0
#: locks this process holds, folder -> file descriptor (closed in forked children)
_HELD: dict[Path, int] = {}


class RunLockedError(ConfigError):
    """Another live run writes into this output folder (one line: holder and the fix)."""


def _close_inherited_locks() -> None:
    """A forked child (a DataLoader worker) must not keep the parent's ``flock`` alive
    after the parent is killed, or the rerun would be refused until the worker exits."""
    for fd in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited_locks)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks since boot) from ``/proc``; None where unreadable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the name may hold spaces and ")"
    return fields[0], int(fields[19])


def _pid_alive(pid: int, pid_start: int | None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, started = stat
    return state not in ("Z", "X") and (pid_start is None or started == pid_start)


def _flock(fd: int) -> bool | None:
    """Try an exclusive ``flock``: True taken, False held by someone, None unsupported."""
    if fcntl is None:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return None  # e.g. a shared file system without locks: heartbeats decide
    return True


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class RunLock:
    """``with RunLock(folder):`` the run's whole life; see the module docstring."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.owner = os.getpid()
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        own = _proc_stat(self.owner)
        self.record = {"host": socket.gethostname(), "pid": self.owner,
                       "pid_start": own[1] if own else None, "started": int(time.time()),
                       "heartbeat": int(time.time()), "token": secrets.token_hex(8)}  # fmt: skip

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; ``RunLockedError`` if a live run has it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # each pass loses only to a racing create or takeover
            if self._create() or self._take_over():
                _HELD[self.folder.resolve()] = self.fd
                self._beat = threading.Thread(target=self._heartbeat, daemon=True,
                                              name="aptune-run-lock")  # fmt: skip
                self._beat.start()
                return self
            time.sleep(0.05)
        raise self._refusal(self._read())

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        if self.fd is None or os.getpid() != self.owner:
            return  # never taken, or a forked child's copy
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        with contextlib.suppress(OSError):
            if self._is_current(self.fd):
                self.path.unlink()
        _HELD.pop(self.folder.resolve(), None)
        os.close(self.fd)
        self.fd = None

    # -- taking it ---------------------------------------------------------------------

    def _staged(self) -> tuple[Path, int]:
        """Our record in a temporary file, already flocked, so it appears complete and held."""
        tmp = self.folder / f"{LOCK_NAME}.{self.owner}.{self.record['token']}.tmp"
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
        os.write(fd, self._data())
        _flock(fd)
        return tmp, fd

    def _create(self) -> bool:
        """Publish our record where no lock file exists (a hard link fails if one does)."""
        tmp, fd = self._staged()
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            os.close(fd)
            return False
        except OSError:  # no hard links here: an exclusive create instead
            os.close(fd)
            return self._create_exclusive()
        finally:
            tmp.unlink(missing_ok=True)
        self.fd = fd
        return True

    def _create_exclusive(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            return False
        _flock(fd)
        os.write(fd, self._data())
        self.fd = fd
        return True

    def _take_over(self) -> bool:
        """Replace a lock whose holder is gone; False to retry (it vanished or changed)."""
        try:
            old = os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            if _flock(old) is False:  # held: alive, or another run is taking it over
                time.sleep(0.2)
                raise self._refusal(self._read())
            if not self._is_current(old):
                return False
            holder = self._read()
            if not self._stale(holder):
                raise self._refusal(holder)
            tmp, fd = self._staged()
            os.replace(tmp, self.path)
            self.fd = fd
        finally:
            os.close(old)
        log.warning("%s: took over the lock of pid %s on %s (started %s, heartbeat %s); "
                    "that run is gone", self.folder, holder.get("pid", "?"),
                    holder.get("host", "?"), _when(holder["started"]),
                    self._ago(holder))  # fmt: skip
        return True

    def _stale(self, holder: dict) -> bool:
        """Whether the holder is gone: see the module docstring."""
        if holder.get("host") == self.record["host"] and isinstance(holder.get("pid"), int):
            pid = holder["pid"]
            if pid == self.owner:  # a restarted container reuses pids; ours is held above
                return self.folder.resolve() not in _HELD
            return not _pid_alive(pid, holder.get("pid_start"))
        return time.time() - holder["heartbeat"] > STALE_AFTER_S

    # -- the file --------------------------------------------------------------------------

    def _data(self) -> bytes:
        return json.dumps(self.record, sort_keys=True).encode()

    def _read(self) -> dict:
        """The holder's record; an unreadable file counts as a foreign holder whose
        heartbeat is the file's modification time."""
        for _ in range(5):
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict) and all(
                    isinstance(holder.get(k), (int, float)) for k in ("started", "heartbeat")
                ):
                    return holder
            except FileNotFoundError:
                break
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        with contextlib.suppress(OSError):
            mtime = self.path.stat().st_mtime
            return {"host": "?", "pid": "?", "started": mtime, "heartbeat": mtime}
        now = time.time()
        return {"host": "?", "pid": "?", "started": now, "heartbeat": now}

    def _is_current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``RUN/.lock`` (not replaced meanwhile)."""
        try:
            a, b = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def _heartbeat(self) -> None:
        """Rewrite the heartbeat in place (same length: integer seconds) until released."""
        warned = False
        while not self._stop.wait(HEARTBEAT_S):
            self.record["heartbeat"] = int(time.time())
            try:
                data = self._data()
                os.pwrite(self.fd, data, 0)
                os.ftruncate(self.fd, len(data))
                lost = not self._is_current(self.fd)
            except (OSError, TypeError):
                lost = True
            if lost and not warned:
                log.warning("%s: this run's lock file was removed or replaced; another run "
                            "may write into this folder", self.path)  # fmt: skip
                warned = True

    @staticmethod
    def _ago(holder: dict) -> str:
        return f"{max(0, round(time.time() - holder['heartbeat']))}s ago"

    def _refusal(self, holder: dict) -> RunLockedError:
        return RunLockedError(
            f"{self.folder} is being written by pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} since {_when(holder['started'])} (heartbeat "
            f"{self._ago(holder)}); wait for it, or use another --output_dir"
        )


def check_not_running(folder: Path | str, what: str) -> None:
    """``RunLockedError`` while a live run holds ``folder``'s lock; takes nothing (export,
    push: a run still training has no final checkpoint to share). ``what`` names the job."""
    lock = RunLock(folder)
    try:
        fd = os.open(lock.path, os.O_RDONLY)
    except OSError:  # no lock file: nobody trains here
        return
    try:
        held = _flock(fd) is False  # closing fd drops the flock we may have taken
    finally:
        os.close(fd)
    holder = lock._read()
    if held or not lock._stale(holder):
        raise RunLockedError(
            f"{lock.folder} is still being trained by pid {holder.get('pid', '?')} on "
            f"{holder.get('host', '?')} (heartbeat {lock._ago(holder)}); {what} once it has "
            "finished"
        )


def hold_run_lock(folder: Path | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    """The run folder's lock for rank 0 (``enabled``); nothing for the other ranks."""
    return RunLock(folder) if enabled else contextlib.nullcontext()


__all__ = ["HEARTBEAT_S", "LOCK_NAME", "STALE_AFTER_S", "RunLock", "RunLockedError",
           "check_not_running", "hold_run_lock"]  # fmt: skip
