"""The epoch driver shared by fine-tuning (``engine.run``) and pre-training (``pretrain``).

One place holds the rules of a training run's epochs: per-epoch seeding, resume (also
mid-epoch, from verified checkpoints), step and epoch checkpoints, the stop signals and
their distributed vote (checkpoint, then ``SystemExit(128 + signum)``). What differs
between jobs comes in as parts: the train step, the loader, a saver, the run's logger, the
job's extra random streams and its end-of-epoch work (records; then, after the epoch's
checkpoint, validation and best).
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aptune.engine import builders as T
from aptune.engine import seeds
from aptune.engine.checkpoint import capture_rng, load_training_state, restore_rng
from aptune.engine.distributed import DistInfo, StopVote, all_gather_objects, wait_for_main
from aptune.engine.loop import EpochStats, TrainStep, train_one_epoch
from aptune.engine.preempt import StopSignals, exit_code
from aptune.engine.run_outputs import RunLogger

log = logging.getLogger("aptune")


@dataclass
class Resumed:
    """Where a run continues: ``epoch`` from optimiser step ``step`` of it (0: its start)."""

    epoch: int
    extra: dict = field(default_factory=dict)
    step: int = 0
    own: dict | None = None  # this rank's record at the step: rng, stats, job streams


def resume(
    path: Path | None, verified: bool, model, ts: TrainStep, info: DistInfo, start_epoch: int
) -> Resumed:
    """Restore ``path`` (None: start at ``start_epoch``) into the model and ``ts``.

    A mid-epoch checkpoint holds every rank's record; a run with another world size has
    another data split anyway, so its ranks continue with fresh random streams.
    """
    if path is None:
        return Resumed(start_epoch)
    state = load_training_state(path, model, ts.optimizer, ts.scaler, ts.ema, verified=verified)
    extra = state.get("extra", {})
    mid = extra.pop("mid_epoch", None)
    log.info("resumed from %s (epoch %d done%s)", path, state["epoch"],
             f", then {mid['step']} steps of epoch {mid['epoch']}" if mid else "")  # fmt: skip
    if mid is None:
        return Resumed(state["epoch"] + 1, extra)
    ranks = mid["ranks"]
    if len(ranks) != info.world_size:
        log.warning("%s was written by %d process(es), this run has %d: the interrupted "
                    "epoch continues with fresh per-rank random streams", path, len(ranks),
                    info.world_size)  # fmt: skip
        return Resumed(mid["epoch"], extra, mid["step"])
    return Resumed(mid["epoch"], extra, mid["step"], ranks[info.rank])


class Saver(Protocol):
    """Writes training state; ``last`` is the (epoch, step) and ``folder`` the path of the
    last save, on every rank."""

    last: tuple[int, int | None] | None
    folder: Path | None

    def state(self, epoch: int, extra: dict, step: int | None = None) -> Path | None: ...


class Streams(Protocol):
    """A job's own per-rank random streams (mixup, masks): reseeded per epoch, carried in
    mid-epoch checkpoints so that a resumed epoch draws what the uninterrupted one drew."""

    def reseed(self, epoch: int) -> None: ...
    def state(self) -> dict: ...
    def restore(self, own: dict) -> None: ...


@dataclass
class FitOptions:
    """The schedule of a run: epochs, what is checkpointed when, the seed of its streams."""

    epochs: int
    seed: int
    save_ckpt: bool = True
    save_ckpt_freq: int = 1
    save_ckpt_steps: int = 0  # > 0: also every that many optimiser steps (mid-epoch too)
    progress: bool = True


EndEpoch = Callable[[int, EpochStats, dict], dict]  # (epoch, stats, extra) -> new extra


def epoch_record(epoch: int, stats: EpochStats, info: DistInfo, **fields) -> dict:
    """The log.txt record of an epoch with every rank's skipped videos (named on rank 0)."""
    skipped = all_gather_objects(stats.skipped, info)
    record = {"epoch": epoch, **stats.as_dict(), **fields}
    record["skipped_videos"] = sum(len(s) for s in skipped)
    if record["skipped_videos"] and info.is_main:
        names = sorted({p for s in skipped for p, _ in s})
        log.warning("epoch %d: skipped %d unreadable training video(s): %s", epoch,
                    record["skipped_videos"], ", ".join(names[:10]))  # fmt: skip
        record["skipped_paths"] = names
    return record


@contextlib.contextmanager
def _close_on_exit(logger: RunLogger):
    """Flush log.txt / TensorBoard when a stop signal or an error ends the epochs."""
    try:
        yield
    except BaseException:
        logger.close()
        raise


def _stop(signum: int, folder: Path | None, info: DistInfo) -> SystemExit:
    if info.is_main:
        saved = f"saved {folder}" if folder else "no checkpoint (--no_save_ckpt)"
        log.warning("stopped by %s: %s; rerun the same command to resume (exit %d)",
                    signal.Signals(signum).name, saved, exit_code(signum))  # fmt: skip
    return SystemExit(exit_code(signum))


@dataclass
class _Epoch:
    """The parts one epoch's step callback needs."""

    ts: TrainStep
    info: DistInfo
    saver: Saver
    streams: Streams
    opts: FitOptions
    vote: StopVote
    signals: StopSignals

    def after_step(self, epoch: int, extra: dict) -> Callable[[int, EpochStats], bool]:
        """Mid-epoch checkpoint when due or when a stop signal reached any rank."""
        steps, every, info = self.ts.steps_per_epoch, self.opts.save_ckpt_steps, self.info

        def check(done: int, stats: EpochStats) -> bool:
            signum = self.vote.poll(self.signals.signum, f"the stop vote (epoch {epoch})")
            due = every > 0 and (epoch * steps + done) % every == 0 and done < steps
            if not ((signum or due) and self.opts.save_ckpt):
                if signum:
                    raise _stop(signum, None, info)
                return False
            mine = {"rng": capture_rng(info.device), **self.streams.state(),
                    "stats": stats.carry()}  # fmt: skip
            ranks = all_gather_objects(mine, info)  # each rank resumes its own streams
            mid = {"mid_epoch": {"epoch": epoch, "step": done, "ranks": ranks}}
            folder = self.saver.state(epoch, {**extra, **mid}, step=done)
            if signum:
                raise _stop(signum, folder, info)
            return False

        return check

    def checkpoint(self, epoch: int, extra: dict) -> None:
        """The epoch checkpoint every ``save_ckpt_freq`` epochs, at the last one and where
        a ``save_ckpt_steps`` multiple falls on the epoch's end."""
        o, steps = self.opts, self.ts.steps_per_epoch
        last = epoch + 1 == o.epochs
        due_steps = o.save_ckpt_steps > 0 and ((epoch + 1) * steps) % o.save_ckpt_steps == 0
        if o.save_ckpt and ((epoch + 1) % o.save_ckpt_freq == 0 or last or due_steps):
            self.saver.state(epoch, extra)
        else:
            wait_for_main(self.info, f"the end of epoch {epoch}")  # rank 0 may be writing

    def stop_at_end(self, epoch: int, extra: dict) -> None:
        """After an epoch, a stop signal seen by any rank ends the run with a checkpoint."""
        signum = self.vote.poll(self.signals.signum, f"the stop vote (end of epoch {epoch})",
                                final=True)  # fmt: skip
        if not signum or epoch + 1 >= self.opts.epochs:
            return
        if self.opts.save_ckpt and self.saver.last != (epoch, None):
            self.saver.state(epoch, extra)
        raise _stop(signum, self.saver.folder if self.opts.save_ckpt else None, self.info)


def _start_epoch(ts: TrainStep, loader, streams: Streams, info: DistInfo, seed: int,
                 epoch: int, resumed: Resumed) -> bool:  # fmt: skip
    """Seed everything for ``epoch``; a resumed epoch skips its consumed batches and gets
    the random states right after its checkpointed step. True: ``epoch`` is resumed."""
    T.seed_everything(seeds.epoch_process_seed(seed, info.rank, epoch))
    mid = epoch == resumed.epoch and resumed.step > 0
    loader.set_epoch(epoch, resumed.step * ts.update_freq if mid else 0)
    streams.reseed(epoch)
    if mid and resumed.own is not None:
        streams.restore(resumed.own)
        restore_rng(resumed.own["rng"], info.device)
    return mid


def fit(ts: TrainStep, loader, info: DistInfo, saver: Saver, logger: RunLogger,
        streams: Streams, end_epoch: EndEpoch, opts: FitOptions, resumed: Resumed,
        extra: dict, evaluate: EndEpoch | None = None) -> dict:  # fmt: skip
    """Train epochs ``resumed.epoch`` .. ``opts.epochs - 1``; returns the last ``extra``.

    ``extra`` is saved with every checkpoint; ``end_epoch`` logs the epoch and returns the
    next ``extra``, before the epoch's checkpoint (a kill right after it keeps the log
    line). ``evaluate`` (validation) runs after that checkpoint, so a failing evaluation
    never throws the epoch's training away; what it changes in ``extra`` reaches the next
    checkpoint (the job keeps its own record of it, e.g. the best checkpoint).
    SIGTERM / SIGUSR1 / Ctrl-C end the run after the current optimiser step with a
    checkpoint and ``SystemExit(128 + signum)``.
    """
    with StopSignals() as signals, _close_on_exit(logger):
        run = _Epoch(ts, info, saver, streams, opts, StopVote(info), signals)
        for epoch in range(resumed.epoch, opts.epochs):
            mid = _start_epoch(ts, loader, streams, info, opts.seed, epoch, resumed)
            own = resumed.own if mid and resumed.own else {}
            carry = EpochStats.from_carry(own.get("stats")) if mid else None
            check = run.after_step(epoch, extra)
            stats = train_one_epoch(ts, loader, epoch, info, opts.progress,
                                    on_step=logger.step, start_step=resumed.step if mid else 0,
                                    carry=carry, after_step=check)  # fmt: skip
            extra = end_epoch(epoch, stats, extra)
            run.checkpoint(epoch, extra)
            if evaluate is not None:
                extra = evaluate(epoch, stats, extra)
            run.stop_at_end(epoch, extra)
    return extra
