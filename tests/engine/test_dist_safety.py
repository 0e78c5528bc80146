"""Distributed runs that do not trip NCCL: each rank touches its own GPU only, evaluation is
sharded, rank 0's long work is waited for on the CPU group, an all-unreadable batch joins
the same all-reduce as any other, and the stop vote agrees without a blocking collective.

CUDA is simulated by patching ``torch.cuda``'s queries; the collectives run for real on
two gloo processes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
import time

import numpy as np
import pytest
import torch
from torch import nn

from aptune.build import build_model
from aptune.config import ConfigError, RunConfig
from aptune.data import Batch
from aptune.engine import loop, rng
from aptune.engine import run as run_module
from aptune.engine.builders import EpochLoader
from aptune.engine.distributed import (
    DistInfo,
    StopVote,
    choose_device,
    cleanup,
    init_distributed,
    wait_for_main,
)
from aptune.engine.loop import TrainStep, train_one_epoch
from aptune.engine.metrics import ViewRecords
from aptune.engine.precision import Precision
from aptune.engine.speed import cast_frozen_weights

FRAMES, SIZE = 8, 32


# -- each rank's own GPU ------------------------------------------------------------------
@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n)``: a node whose processes see ``n`` GPUs."""

    def use(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return use


def test_rng_state_of_the_own_gpu_only(gpus, monkeypatch):
    gpus(8)
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("every GPU"))
    monkeypatch.setattr(torch.cuda, "get_rng_state",
                        lambda d: calls.append(("get", d)) or torch.tensor([d]))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda s, d: calls.append(("set", d, int(s[0]))))  # fmt: skip
    state = rng.capture_rng(torch.device("cuda", 3))
    assert state["cuda_device"]["index"] == 3
    rng.restore_rng(state, torch.device("cuda", 3))
    assert calls == [("get", 3), ("set", 3, 3)]


def test_rng_state_of_a_node_wide_checkpoint_restores_the_own_entry(gpus, monkeypatch):
    """A state holding one entry per GPU of the node (``cuda``) gives this rank its own."""
    gpus(4)
    calls = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d: calls.append((d, int(s[0]))))
    state = rng.capture_rng(torch.device("cpu"))
    assert "cuda_device" not in state and "cuda" not in state  # a CPU run: no CUDA at all
    state["cuda"] = [torch.tensor([k]) for k in range(4)]
    rng.restore_rng(state, torch.device("cuda", 2))
    assert calls == [(2, 2)]


def test_a_cpu_process_on_a_gpu_node_never_touches_cuda(gpus, monkeypatch):
    gpus(8)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: pytest.fail("touched CUDA"))
    assert "cuda_device" not in rng.capture_rng()


@pytest.mark.parametrize(
    "requested, local, world, count, expected",
    [
        ("cuda", 3, 4, 4, "cuda:3"),  # torchrun: each rank its LOCAL_RANK GPU
        ("auto", 1, 2, 2, "cuda:1"),
        ("cuda:2", 2, 4, 4, "cuda:2"),  # naming the rank's own GPU is fine
        ("cuda", 3, 4, 1, "cuda:0"),  # one visible GPU per process (Slurm --gpus-per-task)
        ("cuda:1", 0, 1, 2, "cuda:1"),  # one process may pick any GPU
        ("cpu", 1, 2, 2, "cpu"),
    ],
)
def test_device_per_rank(gpus, requested, local, world, count, expected):
    gpus(count)
    assert str(choose_device(requested, local, world)) == expected


def test_cuda_0_under_a_launcher_is_a_one_line_error(gpus):
    gpus(8)
    with pytest.raises(ConfigError) as e:
        choose_device("cuda:0", 5, 8)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--device cuda:0 under a launcher with 8 processes")
    assert "LOCAL_RANK 5 uses GPU 5" in msg and "--device cuda" in msg


def test_more_processes_than_gpus_is_a_one_line_error(gpus):
    gpus(2)
    with pytest.raises(ConfigError, match="LOCAL_RANK 2 but this node shows 2 GPUs"):
        choose_device("cuda", 2, 4)
    gpus(0)
    with pytest.raises(ConfigError, match="CUDA is not available here"):
        choose_device("cuda", 0, 1)


# -- evaluation sharded by default ---------------------------------------------------------
def test_evaluation_is_sharded_under_ddp_without_dist_eval():
    info = DistInfo(rank=1, world_size=2)
    ds = list(range(5))
    loader = EpochLoader(ds, info, False, seed=0, batch_size=2, num_workers=0)
    assert type(loader.sampler).__name__ == "DistributedSampler"
    assert list(loader.sampler) == [1, 3, 0]  # rank 1's share, padded with a duplicate
    assert RunConfig().job.dist_eval is False  # the reference's default changes nothing


def test_evaluate_split_merges_every_ranks_shard_once(monkeypatch):
    """Rank 0 merges its shard and rank 1's, whose padded duplicate view collapses."""
    probs = np.eye(3)

    def shard(videos):
        rec = ViewRecords()
        rec.add(videos, [0] * len(videos), [v % 3 for v in videos], probs[[v % 3 for v in videos]])
        return rec

    gathered = []
    monkeypatch.setattr(run_module, "predict_views", lambda *a, **k: shard([0, 2, 4]))
    monkeypatch.setattr(run_module, "all_gather_objects",
                        lambda mine, info: gathered.append(mine) or [mine, shard([1, 3, 0])])
    cfg = RunConfig.from_values({"nb_classes": 3})
    res = run_module.evaluate_split(nn.Identity(), [], DistInfo(rank=0, world_size=2),
                                    Precision(), cfg, "val")  # fmt: skip
    assert len(gathered) == 1 and res.num_videos == 5 and res.top1 == 100.0


def test_rank0_checkpoint_writes_are_waited_for_on_the_cpu_group(monkeypatch, tmp_path):
    waits = []
    monkeypatch.setattr(run_module, "wait_for_main", lambda info, what: waits.append(what))
    monkeypatch.setattr(run_module, "save_training_state", lambda *a, **k: tmp_path)
    ts = TrainStep(nn.Linear(1, 1), None, None, None, 1)
    saver = run_module._Saver(RunConfig(), DistInfo(rank=1, world_size=2), tmp_path, None, ts,
                              full=False)  # fmt: skip
    saver.state(3, {}, step=7)
    assert waits == ["the checkpoint of epoch 3"]


# -- the empty batch -----------------------------------------------------------------------
class RecordingDDP(nn.Module):
    """Stands for DDP: records, per forward, the rows, whether ``no_sync`` was on and
    whether autocast was."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module, self.syncing_off, self.calls = module, False, []

    @contextlib.contextmanager
    def no_sync(self):
        self.syncing_off = True
        try:
            yield
        finally:
            self.syncing_off = False

    def forward(self, x):
        self.calls.append((x.shape[0], self.syncing_off, torch.is_autocast_enabled("cpu")))
        return self.module(x)


def batch(rows: int) -> Batch:
    clips = torch.randn(rows, 3, FRAMES, SIZE, SIZE)
    labels = torch.zeros(rows, dtype=torch.int64)
    return Batch(clips, labels, labels.clone(), labels.clone(), [("x.mp4", "bad")] * (rows == 0))


def test_an_empty_batch_runs_under_autocast_and_no_sync_like_any_other(monkeypatch):
    """Frozen weights stored in bf16 (what a bf16 run does): the empty batch's forward
    needs autocast, and with --update_freq 2 it must skip the all-reduce exactly when a
    full batch in its place would."""
    model = build_model("vit_nano", num_classes=4, transfer_type="prompt", num_frames=FRAMES,
                        input_size=SIZE, prompt_num_tokens=2)  # fmt: skip
    assert cast_frozen_weights(model, torch.bfloat16) > 0
    ddp = RecordingDDP(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ts = TrainStep(ddp, opt, np.full(2, 0.1), np.zeros(2), steps_per_epoch=2, update_freq=2,
                   precision=Precision("bf16", "cpu"))  # fmt: skip
    monkeypatch.setattr(loop, "all_reduce_mean", lambda value, info: value)
    stats = train_one_epoch(ts, [batch(0), batch(2), batch(2), batch(0)], 0,
                            DistInfo(rank=0, world_size=2), progress=False)  # fmt: skip
    assert ddp.calls == [(0, True, True), (2, False, True), (2, True, True), (0, False, True)]
    assert stats.loss_n == 2 and stats.clips == 4 and len(stats.skipped) == 2


# -- two real processes: the stop vote and rank 0's long work -------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, results) -> None:
    """One of two gloo ranks (``--dist_timeout 1``): vote each step, rank 1 signalled at
    step 3; then rank 0 works alone for longer than the timeout before they meet."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                      RANK=str(rank), LOCAL_RANK=str(rank))  # fmt: skip
    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)
    info = init_distributed("cpu", timeout=1.0)
    vote, seen = StopVote(info), []
    for step in range(1, 10):
        signum = signal.SIGTERM if rank == 1 and step >= 3 else 0
        seen.append(vote.poll(signum, f"step {step}"))
        if seen[-1]:
            break
    final = vote.poll(signal.SIGUSR1 if rank == 0 else 0, "epoch end", final=True)
    if rank == 0:
        time.sleep(2.5)  # a checkpoint write on a slow disk
    started = time.monotonic()
    wait_for_main(info, "the checkpoint")
    results.put((rank, seen, final, time.monotonic() - started))
    cleanup(info)


def test_two_ranks_agree_on_the_stop_step_and_wait_for_rank0_past_the_timeout():
    ctx = multiprocessing.get_context("spawn")
    results, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, results)) for r in (0, 1)]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    for rank, seen, final, _waited in got:
        # signalled at step 3 on rank 1 only: both ranks stop at step 4, together
        assert seen == [0, 0, 0, signal.SIGTERM], (rank, seen)
        assert final == signal.SIGUSR1  # the end-of-epoch vote waits for the answer
    assert got[1][3] > 1.5  # rank 1 waited through rank 0's work, beyond --dist_timeout
