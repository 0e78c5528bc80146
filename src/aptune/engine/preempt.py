"""Preemption: SIGTERM / SIGUSR1 / the first Ctrl-C ask the run to stop at a step boundary.

Slurm (``--signal=USR1@120``, and SIGTERM before SIGKILL) and Kubernetes (SIGTERM, then
SIGKILL after the grace period) warn a job before killing it. The handler only records
the signal; the training loop finishes the optimiser step in progress, writes a
checkpoint and raises ``SystemExit(128 + signum)`` so schedulers and torchrun see an
interruption (143 for SIGTERM), not success. A second Ctrl-C raises KeyboardInterrupt at
once. Under DDP the ranks agree through ``distributed.StopVote`` on the step to stop at
(the step after the signal arrived, without making any step wait), so a signal that
reached one rank stops all of them at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

log = logging.getLogger("aptune")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopSignals:
    """Context manager installing the handlers (main thread only; restored on exit)."""

    def __init__(self) -> None:
        self.signum = 0  # 0: no stop requested
        self._old: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # second Ctrl-C: stop now, no checkpoint
        if not self.signum:
            self.signum = signum
            again = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
            log.warning("received %s: finishing the current optimiser step, then saving a "
                        "checkpoint and exiting%s", signal.Signals(signum).name, again)  # fmt: skip


def exit_code(signum: int) -> int:
    """What a process killed by ``signum`` reports: 128 + signum (143 for SIGTERM)."""
    return 128 + int(signum)


def ignore_in_workers() -> None:
    """DataLoader workers leave stop signals to the main process (Slurm signals the whole
    step; a worker killed by SIGTERM would end the run before it can checkpoint)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
