"""The training step reads nothing back from the device between log points.

On a GPU every read of a tensor's value (``.item()``, ``float(t)``, ``if t:``, ...) waits
for all queued kernels, so the CPU cannot run ahead. Here the step runs on the CPU and
every such read is counted; the loop may read only every ``--log_every`` steps, before a
checkpoint and at the end of the epoch. Also: the epoch's loss is still the exact mean
of the micro-batch losses, EMA and DDP do no per-step work on frozen tensors, data
loading keeps its workers and pins its batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from aptune.build import build_model
from aptune.config import ConfigError, RunConfig
from aptune.data import Batch, ClipItem, tensor_ops
from aptune.engine import loop
from aptune.engine.builders import EpochLoader, build_train_step, wrap_ddp
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import NonFiniteLossError, train_one_epoch

READS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist")
FRAMES, SIZE, CLASSES = 8, 32, 4


class ReadCounter:
    """Counts value reads of tensors, except those of ``optimizer``'s step counters: they
    live on the CPU on a GPU too (non-fused optimisers), so reading them waits for nothing."""

    def __init__(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        self.count = 0
        self.optimizer = optimizer

    def host_resident(self, t: torch.Tensor) -> bool:
        state = self.optimizer.state.values() if self.optimizer is not None else ()
        return any(t is s.get("step") for s in state)

    def install(self, monkeypatch) -> None:
        for name in READS:
            real = getattr(torch.Tensor, name)

            def counted(t, *a, _real=real, **kw):
                if not self.host_resident(t):
                    self.count += 1
                return _real(t, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_nano", num_classes=CLASSES, transfer_type="prompt",
                       num_frames=FRAMES, input_size=SIZE, prompt_num_tokens=2)  # fmt: skip


def run_config(**values) -> RunConfig:
    base = {"model": "vit_nano", "nb_classes": CLASSES, "num_frames": FRAMES,
            "input_size": SIZE, "epochs": 2, "warmup_epochs": 1, "log_every": 4}  # fmt: skip
    return RunConfig.from_values({**base, **values})


def batch(rows: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    clips = torch.randn(rows, 3, FRAMES, SIZE, SIZE, generator=g)
    labels = torch.randint(0, CLASSES, (rows,), generator=g)
    index = torch.arange(rows)
    return Batch(clips, labels, index, torch.zeros(rows, dtype=torch.int64))


def empty_batch() -> Batch:
    none = torch.zeros(0, dtype=torch.int64)
    return Batch(torch.zeros(0, 3, FRAMES, SIZE, SIZE), none, none, none, [("bad.mp4", "x")])


def step_reads(ts, batches, counter: ReadCounter, epoch: int = 0, **kw) -> list[int]:
    """Reads made during each optimiser step (from the end of one to the end of the next;
    the first also holds the loop's set-up)."""
    per_step, seen = [], [0]

    def after_step(done, stats):
        per_step.append(counter.count - seen[0])
        seen[0] = counter.count
        return False

    counter.count = 0
    train_one_epoch(ts, batches, epoch, DistInfo(), progress=False, after_step=after_step, **kw)
    return per_step


@pytest.mark.parametrize(
    "values",
    [
        {"opt": "sgd"},  # the reference's recipe
        {"opt": "adamw", "clip_grad": 1.0, "model_ema": True, "update_freq": 2},
        {"opt": "sgd", "mixup": 0.8, "cutmix": 1.0, "mixup_prob": 1.0, "bf16": True},
    ],
)
def test_no_read_between_log_points(values, monkeypatch):
    model = tiny_model()
    cfg = run_config(**values)
    steps = 8
    ts = build_train_step(cfg, model, model, DistInfo(), steps)
    if ts.mixup is not None:
        ts.mixup.rng = np.random.default_rng(0)
    micro = steps * cfg.optim.update_freq
    batches = [batch(2, i) for i in range(micro)]
    batches[2] = empty_batch()  # an all-unreadable batch takes the same path
    counter = ReadCounter(ts.optimizer)
    counter.install(monkeypatch)
    logged = []
    reads = step_reads(ts, batches, counter, on_step=lambda s, v: logged.append((s, v)))
    assert len(reads) == steps
    quiet = [r for i, r in enumerate(reads) if (i + 1) % 4 and i > 0]
    assert quiet == [0] * len(quiet), reads  # steps 2, 3, 5, 6, 7
    assert reads[3] > 0 and reads[7] > 0  # the log points read the sums
    assert [s for s, _ in logged] == [3, 7]
    assert all(math.isfinite(v["loss"]) and "grad_norm" in v for _, v in logged), logged


def test_optimiser_step_counters_are_the_only_host_reads_of_adamw(monkeypatch):
    """AdamW's step counters sit on the CPU also on a GPU: the check above is honest only
    if nothing else is excused."""
    model = tiny_model()
    ts = build_train_step(run_config(opt="adamw"), model, model, DistInfo(), 4)
    strict, excusing = ReadCounter(), ReadCounter(ts.optimizer)
    strict.install(monkeypatch)
    step_reads(ts, [batch(2, i) for i in range(2)], strict)
    excusing.install(monkeypatch)
    reads = step_reads(ts, [batch(2, i) for i in range(2)], excusing, epoch=1)
    assert strict.count > 0 and reads == [0, 0]


def test_scaled_fp16_step_skips_infs_without_a_read(monkeypatch):
    """A loss scaler with a fused optimiser (what fp16 cards get): no read either."""
    model = tiny_model()
    ts = build_train_step(run_config(opt="adamw", log_every=100), model, model, DistInfo(), 4)
    ts.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                     fused=True)  # fmt: skip
    ts.scaler = torch.amp.GradScaler("cpu")
    counter = ReadCounter()
    counter.install(monkeypatch)
    reads = step_reads(ts, [batch(2, i) for i in range(4)], counter)
    assert reads[1:] == [0, 0, 0]


def test_epoch_loss_is_the_exact_mean_of_the_micro_batch_losses():
    model = tiny_model()
    ts = build_train_step(run_config(update_freq=2), model, model, DistInfo(), 4)
    losses = []
    criterion = ts.criterion

    def recorded(logits, labels):
        loss = criterion(logits, labels)
        losses.append(loss.detach().clone())
        return loss

    ts.criterion = recorded
    batches = [batch(2, i) for i in range(8)]
    batches[5] = empty_batch()  # not a loss: not in the mean
    stats = train_one_epoch(ts, batches, 0, DistInfo(), progress=False)
    expected = 0.0
    for value in losses:
        expected += float(value)
    assert len(losses) == 7 and stats.loss_n == 7
    assert stats.loss == expected / 7  # bit for bit: what reading each loss gave


def nan_at_fifth_loss(ts) -> list[int]:
    """Make the 5th micro-batch loss NaN; returns the call counter."""
    calls, criterion = [0], ts.criterion

    def criterion_with_nan(logits, labels):
        calls[0] += 1
        loss = criterion(logits, labels)
        return loss * float("nan") if calls[0] == 5 else loss

    ts.criterion = criterion_with_nan
    return calls


def test_a_nan_loss_stops_at_the_next_read():
    model = tiny_model()
    ts = build_train_step(run_config(log_every=4), model, model, DistInfo(), 8)
    calls = nan_at_fifth_loss(ts)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at step 8 \(epoch 0\)"):
        train_one_epoch(ts, [batch(2, i) for i in range(8)], 0, DistInfo(), progress=False)
    assert calls[0] == 8  # noticed at the log point, not at once


def test_a_nan_loss_is_noticed_before_a_checkpoint_is_written():
    model = tiny_model()
    ts = build_train_step(run_config(log_every=4), model, model, DistInfo(), 8)
    nan_at_fifth_loss(ts)
    saved = []

    def checkpoint_at_6(done, stats):  # what run.py's mid-epoch checkpoint asks for
        if done == 6:
            saved.append(stats.carry())
        return False

    with pytest.raises(NonFiniteLossError, match="before a checkpoint"):
        train_one_epoch(ts, [batch(2, i) for i in range(8)], 0, DistInfo(), progress=False,
                        after_step=checkpoint_at_6)  # fmt: skip
    assert saved == []


def test_ema_lerps_only_the_trainable_tensors(monkeypatch):
    model = tiny_model()
    ts = build_train_step(run_config(model_ema=True, model_ema_decay=0.5), model, model,
                          DistInfo(), 2)  # fmt: skip
    frozen = {n: t.clone() for n, t in ts.ema.module.state_dict().items()
              if not dict(model.named_parameters())[n].requires_grad}  # fmt: skip
    sizes = []
    real = torch._foreach_lerp_

    def recorded(a, b, w):
        sizes.append(len(a))
        return real(a, b, w)

    monkeypatch.setattr(torch, "_foreach_lerp_", recorded)
    before = {n: t.clone() for n, t in ts.ema.module.state_dict().items()}
    train_one_epoch(ts, [batch(2, i) for i in range(2)], 0, DistInfo(), progress=False)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sizes == [len(trainable)] * 2  # one foreach call per step, trainable tensors only
    ema = ts.ema.module.state_dict()
    assert all(torch.equal(ema[n], t) for n, t in frozen.items())
    changed = [n for n in trainable if not torch.equal(ema[n], before[n])]
    assert changed  # the average moved


def test_ddp_does_not_rebroadcast_buffers(monkeypatch):
    made = {}

    class FakeDDP:
        def __init__(self, module, **kw):
            made.update(kw)

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", FakeDDP)
    wrap_ddp(nn.Linear(2, 2), DistInfo(rank=0, world_size=2))
    assert made == {"device_ids": None, "broadcast_buffers": False}


class SeededItems(torch.utils.data.Dataset):
    """Each item draws from the global torch RNG, as a training transform does."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> ClipItem:
        return ClipItem(torch.rand(1, 3, 1, 1, 1), 0, index, 0)


def epoch_clips(loader: EpochLoader, epoch: int) -> torch.Tensor:
    loader.set_epoch(epoch)
    return torch.cat([b.clips.flatten() for b in loader])


def test_persistent_workers_see_each_epochs_seed():
    """The epoch's seed travels in the batch keys: workers forked once give every epoch
    the clips the main process gives it."""
    kw = dict(seed=5, batch_size=2)
    main = EpochLoader(SeededItems(), DistInfo(), True, num_workers=0, **kw)
    workers = EpochLoader(SeededItems(), DistInfo(), True, num_workers=1, **kw)
    assert workers.loader.persistent_workers and not main.loader.persistent_workers
    first = epoch_clips(workers, 0)
    pids = [w.pid for w in workers.loader._iterator._workers]
    for epoch in (0, 1, 2):
        assert torch.equal(epoch_clips(main, epoch), epoch_clips(workers, epoch))
    assert not torch.equal(first, epoch_clips(workers, 1))  # a new epoch, new draws
    assert [w.pid for w in workers.loader._iterator._workers] == pids  # never re-forked
    evaluation = EpochLoader(SeededItems(), DistInfo(), False, num_workers=1, **kw)
    assert not evaluation.loader.persistent_workers  # a one-off pass keeps nothing


def test_batches_are_pinned_for_a_gpu_and_copied_without_waiting(monkeypatch):
    gpu = DistInfo(device=torch.device("cuda", 0))
    kw = dict(seed=0, batch_size=2, num_workers=0)
    assert EpochLoader(SeededItems(), gpu, True, **kw).loader.pin_memory
    assert not EpochLoader(SeededItems(), DistInfo(), True, **kw).loader.pin_memory
    copies = []
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: copies.append(k) or t)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: copies.append("pinned") or t)
    loop._device_batch(loop.TrainStep(None, None, None, None, 1), batch(2, 0), gpu)
    assert copies == [{"non_blocking": True}] * 2  # clips and labels
    copies.clear()
    tensor_ops.to_device(torch.tensor([1, 2]), torch.device("cuda", 0))  # augmentation values
    assert copies == ["pinned", {"non_blocking": True}]


def test_log_every_is_an_option_that_reaches_the_step():
    assert RunConfig().job.log_every == 100
    with pytest.raises(ConfigError, match="--log_every must be >= 1, got 0"):
        run_config(log_every=0)
    model = tiny_model()
    ts = build_train_step(run_config(log_every=7), model, model, DistInfo(), 2)
    assert ts.log_every == 7
    from aptune.cli.train import parse_train_args

    assert parse_train_args(["--log_every", "25"]).job.log_every == 25
