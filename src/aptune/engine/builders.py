"""Builders that turn resolved flags into the pieces of a run: data, model, optimiser.

Kept apart from the loop (``engine``) and the orchestration (``runner``) so ``eval`` and
``predict`` reuse exactly the construction that training used.
"""

from __future__ import annotations

import argparse
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
from aptune.config import method_options
from aptune.data import DataConfig, DeviceAugment, build_dataset, collate_clips
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import Precision, TrainStep, resolve_precision
from aptune.engine.mixup import VideoMixup, soft_target_cross_entropy
from aptune.engine.optim import ModelEma, build_optimizer, cosine_schedule, scaled_lr
from aptune.engine.preempt import ignore_in_workers
from aptune.models.vit import VisionTransformer
from aptune.recipes import mixup_active

log = logging.getLogger("aptune")


def data_config(args: argparse.Namespace, defer_augment: bool = False) -> DataConfig:
    return DataConfig(
        data_set=args.data_set,
        data_path=args.data_path,
        eval_data_path=args.eval_data_path,
        data_root=args.data_root,
        nb_classes=args.nb_classes,
        num_frames=args.num_frames,
        sampling_rate=args.sampling_rate,
        tubelet_size=args.tubelet_size,
        input_size=args.input_size,
        short_side_size=args.short_side_size,
        num_sample=args.num_sample,
        test_num_segment=args.test_num_segment,
        test_num_crop=args.test_num_crop,
        aa=args.aa,
        is_aa=args.is_aa,
        reprob=args.reprob,
        remode=args.remode,
        recount=args.recount,
        train_interpolation=args.train_interpolation,
        sampling=args.sampling,
        backend=args.decoder,
        strict_data=args.strict_data,
        crop_scale=tuple(args.crop_scale),
        decode_cache=args.decode_cache,
        defer_augment=defer_augment,
    )


def augments_on_device(args: argparse.Namespace, device: torch.device) -> bool:
    """``--aug_device``: True when training clips are augmented on ``device`` in the main
    process (workers decode only); auto = on a CUDA training device, else in the workers."""
    flag = args.aug_device
    if flag == "cuda" and device.type != "cuda":
        raise ValueError(
            f"--aug_device cuda needs training on a CUDA device (training runs on {device}); "
            "use --aug_device cpu or auto"
        )
    return flag == "cuda" or (flag == "auto" and device.type == "cuda")


def build_device_augment(args: argparse.Namespace, info: DistInfo) -> DeviceAugment:
    """The main-process augmentation of ``--aug_device``; its erasing noise is seeded per
    run and rank (the boxes and every other choice come with each item's plan)."""
    return DeviceAugment(args.input_size, args.remode, seed=args.seed * 1_009 + info.rank)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_host_rngs(seed: int) -> None:
    """Python, numpy and torch's CPU generator: what a data item draws from. Per item,
    ``torch.manual_seed`` would also queue a seed for every accelerator backend, and on a
    CUDA build without an initialised device each queued call records a stack trace
    (about 3 ms: 30% of a small model's epoch, measured with cProfile)."""
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
    """``ds[(pos, index)]``: the item with torch/numpy/random seeded from (epoch, pos).

    A training item's augmentation then depends only on its position in the epoch's
    order, not on which worker made it or what that worker made before: a mid-epoch
    resume can skip the consumed batches without decoding them, and any --num_workers
    gives the same clips. In the main process (--num_workers 0) the global RNG states
    are put back afterwards, so dropout draws do not depend on data loading.
    """

    def __init__(self, dataset) -> None:
        self.dataset, self.epoch_seed = dataset, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        pos, index = key
        seed = (self.epoch_seed * 1_000_003 + pos * 7_919 + 17) % 2**63
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
    """Batches of ``(position, index)`` from ``sampler``; the first ``skip`` are consumed
    from the order (so it stays the same) but never yielded, hence never decoded."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool) -> None:
        self.sampler, self.batch_size, self.drop_last, self.skip = (
            sampler, batch_size, drop_last, 0
        )  # fmt: skip

    def __iter__(self):
        batch: list[tuple[int, int]] = []
        done = 0
        for pos, index in enumerate(self.sampler):
            batch.append((pos, int(index)))
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
    """

    def __init__(self, dataset, args: argparse.Namespace, info: DistInfo, train: bool) -> None:
        self.dataset, self.seed, self.info, self.train = dataset, args.seed, info, train
        self.generator = torch.Generator()
        if info.enabled and (train or args.dist_eval):
            self.sampler = DistributedSampler(
                dataset, info.world_size, info.rank, shuffle=train, seed=args.seed, drop_last=train
            )
        elif train:
            self.sampler = RandomSampler(dataset, generator=self.generator)
        else:
            self.sampler = SequentialSampler(dataset)
        common = dict(
            num_workers=args.num_workers,
            pin_memory=args.pin_mem and info.device.type == "cuda",
            collate_fn=collate_clips,
            worker_init_fn=_seed_worker,
            generator=self.generator,
            persistent_workers=False,
        )
        if train:
            self.positioned = _Positioned(dataset)
            self.batches = _Batches(self.sampler, args.batch_size, drop_last=True)
            self.loader = DataLoader(self.positioned, batch_sampler=self.batches, **common)
        else:
            self.loader = DataLoader(dataset, batch_size=args.batch_size_val,
                                     sampler=self.sampler, drop_last=False, **common)  # fmt: skip

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Reseed for ``epoch``; the next pass starts after ``skip_batches`` batches."""
        self.generator.manual_seed(self.seed * 100_003 + epoch * 7_919 + self.info.rank)
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)
        if self.train:
            self.positioned.epoch_seed = (self.seed * 100_003 + epoch) * 131 + self.info.rank
            self.batches.skip = skip_batches

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


def build_datasets(
    args: argparse.Namespace, splits: tuple[str, ...], defer_augment: bool = False
) -> dict:
    """Datasets of ``splits``; ``defer_augment``: training items carry decoded frames and
    plans for :class:`DeviceAugment` (evaluation views never do)."""
    cfg = data_config(args, defer_augment)
    return {split: build_dataset(split, cfg) for split in splits}


def build_run_model(args: argparse.Namespace, info: DistInfo) -> VisionTransformer:
    model = build_model(
        args.model,
        num_classes=args.nb_classes,
        transfer_type=args.transfer_type,
        num_frames=args.num_frames,
        input_size=args.input_size,
        tubelet_size=args.tubelet_size,
        drop_path=args.drop_path,
        drop=args.drop,
        attn_drop_rate=args.attn_drop_rate,
        fc_drop_rate=args.fc_drop_rate,
        init_scale=args.init_scale,
        checkpoint=args.finetune or None,
        model_key=args.model_key,
        model_prefix=args.model_prefix,
        attn_impl="sdpa" if args.attn_impl == "auto" else args.attn_impl,  # auto: engine.speed
        cos_attn=args.cos_attn or None,  # None: on when the checkpoint has V2's attn.scale
        **method_options(args),
    )
    return model.to(info.device)


def trains_backbone(model: VisionTransformer) -> bool:
    return any(c.trains_backbone for c in getattr(model, "tuning_configs", []))


def saves_full_weights(model: VisionTransformer, args: argparse.Namespace) -> bool:
    """Checkpoints hold every tensor when the backbone trains, or when it was never loaded
    (no --finetune): a random frozen backbone exists only in this run, so a trainable-only
    file could not rebuild the trained model."""
    return trains_backbone(model) or not args.finetune


def steps_per_epoch(num_train: int, args: argparse.Namespace, info: DistInfo) -> int:
    per_step = args.batch_size * args.update_freq * info.world_size
    steps = num_train // per_step
    if steps < 1:
        raise ValueError(
            f"the training list has {num_train} videos, fewer than one optimiser step needs "
            f"(--batch_size {args.batch_size} x --update_freq {args.update_freq} x "
            f"{info.world_size} processes); lower --batch_size"
        )
    return steps


def build_train_step(
    args: argparse.Namespace, model, ddp_model, info: DistInfo, steps: int
) -> TrainStep:
    world = info.world_size
    lr = scaled_lr(args.lr, args.batch_size, args.update_freq, world)
    min_lr = scaled_lr(args.min_lr, args.batch_size, args.update_freq, world)
    # the reference builds its schedule without --warmup_lr: warmup starts at 0 unless given
    warmup_lr = 0.0
    if args.warmup_lr is not None:
        warmup_lr = scaled_lr(args.warmup_lr, args.batch_size, args.update_freq, world)
    layer_decay = args.layer_decay if trains_backbone(model) else None
    optimizer = build_optimizer(
        model,
        opt=args.opt,
        lr=lr,
        weight_decay=args.weight_decay,
        opt_eps=args.opt_eps,
        opt_betas=tuple(args.opt_betas) if args.opt_betas else None,
        momentum=args.momentum,
        layer_decay=layer_decay,
        head_lr_scale=args.head_lr_scale,
    )
    lr_values = cosine_schedule(
        lr, min_lr, args.epochs, steps, args.warmup_epochs, warmup_lr, args.warmup_steps
    )
    wd_end = args.weight_decay if args.weight_decay_end is None else args.weight_decay_end
    wd_values = cosine_schedule(args.weight_decay, wd_end, args.epochs, steps)
    precision = run_precision(args, info.device)
    scaler = build_scaler(precision, args.enable_deepspeed)
    ema = None
    if args.model_ema:
        ema = ModelEma(model, decay=args.model_ema_decay)
    mixup = None
    if mixup_active(args):  # soft targets even where mixup_prob 0 never mixes, as there
        mixup = VideoMixup(
            args.mixup, args.cutmix, args.mixup_prob, args.mixup_switch_prob,
            args.smoothing, args.nb_classes, cutmix_minmax=args.cutmix_minmax,
        )  # fmt: skip

    def criterion(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, labels, label_smoothing=args.smoothing)

    return TrainStep(
        model=ddp_model,
        optimizer=optimizer,
        lr_values=lr_values,
        wd_values=wd_values,
        steps_per_epoch=steps,
        update_freq=args.update_freq,
        clip_grad=args.clip_grad,
        precision=precision,
        scaler=scaler,
        ema=ema,
        mixup=mixup,
        criterion=criterion,
        soft_criterion=soft_target_cross_entropy,
        max_steps=args.max_steps_per_epoch,
    )


def run_precision(args: argparse.Namespace, device: torch.device) -> Precision:
    """``--precision``, except that ``--enable_deepspeed`` with ``auto`` on a GPU trains in
    fp16 as the reference's DeepSpeed config does."""
    if args.enable_deepspeed and args.precision == "auto" and device.type == "cuda":
        return resolve_precision("fp16", device)
    return resolve_precision(args.precision, device)


def build_scaler(precision: Precision, deepspeed: bool) -> torch.amp.GradScaler | None:
    """fp16's loss scaler; under ``--enable_deepspeed`` the reference's dynamic scale:
    2^7 at the start, doubled after 128 steps without an overflow."""
    if precision.name != "fp16":
        return None
    if deepspeed:
        return torch.amp.GradScaler("cuda", init_scale=2.0**7, growth_interval=128)
    return torch.amp.GradScaler("cuda")


def wrap_ddp(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    if not info.enabled:
        return model
    ids = [info.device.index] if info.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def run_dir(args: argparse.Namespace) -> Path:
    if not args.output_dir:
        raise ValueError("--output_dir is required: it holds checkpoints, logs and reports")
    return Path(args.output_dir)
