"""Builders that turn resolved flags into the pieces of a run: data, model, optimiser.

Kept apart from the loop (``engine``) and the orchestration (``runner``) so ``eval`` and
``predict`` reuse exactly the construction that training used.
"""

from __future__ import annotations

import functools
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)

from aptune.build import build_model
from aptune.config import ConfigError, RunConfig
from aptune.data import DataConfig, DeviceAugment, build_dataset, collate_clips
from aptune.data.probe import usable_cpus
from aptune.engine import seeds
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import TrainStep
from aptune.engine.mixup import VideoMixup, soft_target_cross_entropy
from aptune.engine.optim import ModelEma, build_optimizer, cosine_schedule, scaled_lr
from aptune.engine.precision import build_scaler, run_precision
from aptune.engine.preempt import ignore_in_workers
from aptune.engine.segment_merge import TokenMerge, WholeVideos, videos_per_batch
from aptune.models.vit import VisionTransformer
from aptune.recipes import mixup_active

log = logging.getLogger("aptune")


def data_config(cfg: RunConfig, defer_augment: bool = False) -> DataConfig:
    return DataConfig(
        data_set=cfg.data.data_set,
        data_path=cfg.data.data_path,
        eval_data_path=cfg.data.eval_data_path,
        data_root=cfg.data.data_root,
        nb_classes=cfg.data.nb_classes,
        num_frames=cfg.model.num_frames,
        sampling_rate=cfg.data.sampling_rate,
        tubelet_size=cfg.model.tubelet_size,
        input_size=cfg.model.input_size,
        short_side_size=cfg.data.short_side_size,
        num_sample=cfg.data.num_sample,
        test_num_segment=cfg.data.test_num_segment,
        test_num_crop=cfg.data.test_num_crop,
        aa=cfg.data.aa,
        is_aa=cfg.data.is_aa,
        reprob=cfg.data.reprob,
        remode=cfg.data.remode,
        recount=cfg.data.recount,
        train_interpolation=cfg.data.train_interpolation,
        sampling=cfg.data.sampling,
        backend=cfg.data.decoder,
        strict_data=cfg.data.strict_data,
        crop_scale=tuple(cfg.data.crop_scale),
        decode_cache=cfg.data.decode_cache,
        defer_augment=defer_augment,
    )


def augments_on_device(cfg: RunConfig, device: torch.device) -> bool:
    """``--aug_device``: True when training clips are augmented on ``device`` in the main
    process (workers decode only); auto = on a CUDA training device, else in the workers."""
    flag = cfg.data.aug_device
    if flag == "cuda" and device.type != "cuda":
        raise ConfigError(
            f"--aug_device cuda needs training on a CUDA device (training runs on {device}); "
            "use --aug_device cpu or auto"
        )
    return flag == "cuda" or (flag == "auto" and device.type == "cuda")


def build_device_augment(cfg: RunConfig, info: DistInfo) -> DeviceAugment:
    """The main-process augmentation of ``--aug_device``; its erasing noise is seeded per
    run and rank (the boxes and every other choice come with each item's plan)."""
    seed = seeds.device_augment_seed(cfg.job.seed, info.rank)
    return DeviceAugment(cfg.model.input_size, cfg.data.remode, seed=seed)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_host_rngs(seed: int) -> None:
    """Python, numpy and torch's CPU generator: what a data item draws from. Per item,
    ``torch.manual_seed`` would also queue a seed for every accelerator backend, and on a
    CUDA build without an initialised device each queued call records a stack trace, a
    cost per item that rivals a small model's step."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)


def _seed_worker(worker_id: int) -> None:
    """Workers draw numpy/random from their torch seed, itself from the loader's generator."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    ignore_in_workers()


class _Positioned(Dataset):
    """``ds[(epoch_seed, pos, index)]``: the item with torch/numpy/random seeded from the
    epoch's seed and the item's position in the epoch's order.

    A training item's augmentation then depends only on its position in the epoch's
    order, not on which worker made it or what that worker made before: a mid-epoch
    resume can skip the consumed batches without decoding them, and any --num_workers
    gives the same clips. The epoch's seed travels in the key rather than living in the
    dataset, so persistent workers (forked once per run) still see each new epoch. In the
    main process (--num_workers 0) the global RNG states are put back afterwards, so
    dropout draws do not depend on data loading.
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        epoch_seed, pos, index = key
        seed = seeds.item_seed(epoch_seed, pos)
        if get_worker_info() is not None:  # a worker process: its RNGs serve data only
            seed_host_rngs(seed)
            return self.dataset[index]
        saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
        seed_host_rngs(seed)
        try:
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            np.random.set_state(saved[1])
            random.setstate(saved[2])


class _Batches(Sampler):
    """Batches of ``(epoch_seed, position, index)`` from ``sampler``; the first ``skip`` are
    consumed from the order (so it stays the same) but never yielded, hence never decoded.
    Runs in the main process, so ``set_epoch`` changes reach it without new workers."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.skip, self.epoch_seed = 0, 0

    def __iter__(self):
        batch: list[tuple[int, int, int]] = []
        done = 0
        for pos, index in enumerate(self.sampler):
            batch.append((self.epoch_seed, pos, int(index)))
            if len(batch) == self.batch_size:
                if done >= self.skip:
                    yield batch
                done, batch = done + 1, []
        if batch and not self.drop_last and done >= self.skip:
            yield batch

    def __len__(self) -> int:
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class EpochLoader:
    """A DataLoader whose order and augmentations depend only on (seed, epoch, rank).

    This is what makes a resumed run identical to an uninterrupted one: no RNG state of
    earlier epochs leaks into the data order or the augmentations; ``set_epoch(e, skip)``
    continues an epoch after ``skip`` batches (mid-epoch resume). Training items are
    seeded per position (:class:`_Positioned`); evaluation items need no randomness.

    Under DDP every loader is sharded (``DistributedSampler``): evaluation too, whose
    padded duplicates ``metrics.merge_views`` removes, so no rank waits for another's
    whole pass. ``persistent``: the workers live for the whole run instead of being
    forked again every epoch (the epoch's seed reaches them in the batch keys). Batches
    go to pinned memory on a CUDA device, so their copy to the GPU does not wait.
    """

    def __init__(
        self,
        dataset,
        info: DistInfo,
        train: bool,
        *,
        seed: int,
        batch_size: int,
        num_workers: int,
        pin_mem: bool = True,
        persistent: bool | None = None,
    ) -> None:
        self.dataset, self.seed, self.info, self.train = dataset, seed, info, train
        # the order's own generator: the DataLoader also draws from the one it is given
        # (its workers' base seed) when it makes an iterator, which persistent workers do
        # once per run and a single process once per epoch
        self.order = torch.Generator()
        if info.enabled:
            self.sampler = DistributedSampler(dataset, info.world_size, info.rank,
                                              shuffle=train, seed=self.seed, drop_last=train)
        elif train:
            self.sampler = RandomSampler(dataset, generator=self.order)
        else:
            self.sampler = SequentialSampler(dataset)
        keep = train if persistent is None else persistent
        common = dict(
            num_workers=num_workers,
            pin_memory=pin_mem and info.device.type == "cuda",
            collate_fn=collate_clips,
            worker_init_fn=_seed_worker,
            # workers' base seeds; items reseed per position, evaluation draws nothing
            generator=torch.Generator().manual_seed(seed),
            persistent_workers=keep and num_workers > 0,
        )
        if train:
            self.batches = _Batches(self.sampler, batch_size, drop_last=True)
            self.loader = DataLoader(_Positioned(dataset), batch_sampler=self.batches, **common)
        else:
            self.loader = DataLoader(dataset, batch_size=batch_size,
                                     sampler=self.sampler, drop_last=False, **common)  # fmt: skip

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Reseed for ``epoch``; the next pass starts after ``skip_batches`` batches."""
        self.order.manual_seed(seeds.loader_order_seed(self.seed, epoch, self.info.rank))
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if self.train:
            self.batches.epoch_seed = seeds.item_epoch_seed(self.seed, epoch, self.info.rank)
            self.batches.skip = skip_batches

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_datasets(
    cfg: RunConfig, splits: tuple[str, ...], defer_augment: bool = False
) -> dict:
    """Datasets of ``splits``; ``defer_augment``: training items carry decoded frames and
    plans for :class:`DeviceAugment` (evaluation views never do)."""
    data = data_config(cfg, defer_augment)
    return {split: build_dataset(split, data) for split in splits}


def build_run_model(cfg: RunConfig, info: DistInfo) -> VisionTransformer:
    model = build_model(
        cfg.model.model,
        num_classes=cfg.data.nb_classes,
        transfer_type=cfg.model.transfer_type,
        num_frames=cfg.model.num_frames,
        input_size=cfg.model.input_size,
        tubelet_size=cfg.model.tubelet_size,
        drop_path=cfg.model.drop_path,
        drop=cfg.model.drop,
        attn_drop_rate=cfg.model.attn_drop_rate,
        fc_drop_rate=cfg.model.fc_drop_rate,
        init_scale=cfg.model.init_scale,
        checkpoint=cfg.model.finetune or None,
        model_key=cfg.model.model_key,
        model_prefix=cfg.model.model_prefix,
        use_checkpoint=cfg.model.use_checkpoint,
        # auto is decided by engine.speed once the run's device and dtype are known
        attn_impl="sdpa" if cfg.model.attn_impl == "auto" else cfg.model.attn_impl,
        cos_attn=cfg.model.cos_attn or None,  # None: on when the checkpoint has V2's attn.scale
        head=cfg.head_kind(),
        head_checkpoint=cfg.model.head_checkpoint or None,
        **cfg.method_options(),
    )
    return model.to(info.device)


def trains_backbone(model: VisionTransformer) -> bool:
    return any(c.trains_backbone for c in model.tuning_configs)


def saves_full_weights(model: VisionTransformer, cfg: RunConfig) -> bool:
    """Checkpoints hold every tensor when the backbone trains, or when it was never loaded
    (no --finetune): a random frozen backbone exists only in this run, so a trainable-only
    file could not rebuild the trained model."""
    return trains_backbone(model) or not cfg.model.finetune


def steps_per_epoch(num_train: int, batch_size: int, update_freq: int, world: int) -> int:
    steps = num_train // (batch_size * update_freq * world)
    if steps < 1:
        raise ConfigError(
            f"the training list has {num_train} videos, fewer than one optimiser step needs "
            f"(--batch_size {batch_size} x --update_freq {update_freq} x {world} processes); "
            "lower --batch_size"
        )
    return steps


def build_train_step(cfg: RunConfig, model, ddp_model, info: DistInfo, steps: int) -> TrainStep:
    o = cfg.optim

    def per_256(value: float) -> float:
        return scaled_lr(value, o.batch_size, o.update_freq, info.world_size)

    lr, min_lr = per_256(o.lr), per_256(o.min_lr)
    # the reference builds its schedule without --warmup_lr: warmup starts at 0 unless given
    warmup_lr = 0.0 if o.warmup_lr is None else per_256(o.warmup_lr)
    precision = run_precision(cfg, info.device)
    scaler = build_scaler(precision, cfg.job.enable_deepspeed)
    optimizer = build_optimizer(
        model,
        opt=o.opt,
        lr=lr,
        weight_decay=o.weight_decay,
        opt_eps=o.opt_eps,
        opt_betas=tuple(o.opt_betas) if o.opt_betas else None,
        momentum=o.momentum,
        layer_decay=o.layer_decay if trains_backbone(model) else None,
        head_lr_scale=o.head_lr_scale,
        fused=scaler is not None,  # the scaler's inf/NaN skip stays on the device
    )
    lr_values = cosine_schedule(
        lr, min_lr, o.epochs, steps, o.warmup_epochs, warmup_lr, o.warmup_steps
    )
    wd_end = o.weight_decay if o.weight_decay_end is None else o.weight_decay_end
    wd_values = cosine_schedule(o.weight_decay, wd_end, o.epochs, steps)
    ema = ModelEma(model, decay=o.model_ema_decay) if o.model_ema else None
    mixup = None
    if mixup_active(vars(o)):  # soft targets even where mixup_prob 0 never mixes, as there
        mixup = VideoMixup(
            o.mixup, o.cutmix, o.mixup_prob, o.mixup_switch_prob, o.smoothing,
            cfg.data.nb_classes, cutmix_minmax=o.cutmix_minmax,
        )  # fmt: skip

    def criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=o.smoothing)

    return TrainStep(
        model=ddp_model,
        optimizer=optimizer,
        lr_values=lr_values,
        wd_values=wd_values,
        steps_per_epoch=steps,
        update_freq=o.update_freq,
        clip_grad=o.clip_grad,
        precision=precision,
        scaler=scaler,
        ema=ema,
        mixup=mixup,
        criterion=criterion,
        soft_criterion=soft_target_cross_entropy,
        max_steps=cfg.job.max_steps_per_epoch,
        log_every=cfg.job.log_every,
    )


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DDP without re-broadcasting buffers from rank 0 at every forward: the model's
    buffers are constants (the sinusoid position table) built the same on every rank."""
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                     broadcast_buffers=False)  # fmt: skip


@functools.cache
def loader_workers(requested: int) -> int:
    """``--num_workers`` capped at the CPUs this process may use, said once per value.

    The reference's default (10) on a 2-core machine only adds processes that wait for
    the cores (and PyTorch warns about them); a capped count decodes as fast. The data
    order and augmentation do not depend on the worker count (items are seeded by
    position), so the cap changes no result."""
    cpus = usable_cpus()
    if requested <= cpus:
        return requested
    log.info("--num_workers %d capped at %d: the CPUs this process may use", requested, cpus)
    return cpus


def run_loader(
    dataset, cfg: RunConfig, info: DistInfo, train: bool, persistent: bool | None = None
) -> EpochLoader:
    """A run's training (``batch_size``) or evaluation (``batch_size_val``) loader;
    ``persistent`` (default: for training) keeps its workers across passes."""
    batch = cfg.optim.batch_size if train else cfg.optim.batch_size_val
    workers = loader_workers(cfg.data.num_workers)
    return EpochLoader(dataset, info, train, seed=cfg.job.seed, batch_size=batch,
                       num_workers=workers, pin_mem=cfg.data.pin_mem,
                       persistent=persistent)  # fmt: skip


def views_loader(
    dataset, cfg: RunConfig, info: DistInfo, merge: TokenMerge | None
) -> EpochLoader:
    """The test split's loader: one view per item, or with ``merge`` one whole video per
    item (a sampler then never splits a video) and ``--batch_size_val`` clips' worth of
    videos per batch."""
    if merge is None:
        return run_loader(dataset, cfg, info, train=False)
    return EpochLoader(WholeVideos(dataset), info, False, seed=cfg.job.seed,
                       batch_size=videos_per_batch(cfg.optim.batch_size_val, merge),
                       num_workers=loader_workers(cfg.data.num_workers),
                       pin_mem=cfg.data.pin_mem, persistent=False)  # fmt: skip


def run_dir(output_dir: str) -> Path:
    if not output_dir:
        raise ConfigError("--output_dir is required: it holds checkpoints, logs and reports")
    return Path(output_dir)
