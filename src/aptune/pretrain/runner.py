"""``aptune pretrain``: VideoMAE self-supervised pre-training on the fine-tuning engine.

The same machinery as ``aptune train`` runs it: ``EpochLoader`` (data order a function of
seed and epoch), the engine's ``train_one_epoch`` (per-step lr/wd schedules, clipping,
accumulation, DDP, bf16, NaN guard, skipped-video accounting) driven by ``engine.fit``
(auto-resume from verified ``checkpoint-NNNN/`` folders, also mid-epoch; SIGTERM / SIGUSR1
checkpoint then exit 128+signum), and ``log.txt`` via ``RunLogger``. The only new piece is
:class:`MaskedVideoObjective`, a module whose forward returns the loss, so the engine's
criterion is the identity.

Output folder: ``config.yaml``, ``log.txt``, ``checkpoint-NNNN/`` and, at the end,
``pretrain.safetensors``: encoder + decoder in VideoMAE's pre-training key layout, which
``aptune train --finetune`` / ``build_model(checkpoint=...)`` read like an official
``checkpoint.pth``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch
import yaml
from torch import nn

from aptune.engine import builders as T
from aptune.engine import seeds
from aptune.engine.checkpoint import latest_verified, save_model_weights
from aptune.engine.distributed import (
    DistInfo,
    barrier,
    cleanup,
    init_distributed,
)
from aptune.engine.fit import FitOptions, epoch_record, fit, resume
from aptune.engine.loop import EpochStats, Precision, TrainStep, resolve_precision
from aptune.engine.optim import build_optimizer, cosine_schedule, scaled_lr
from aptune.engine.run import Saver
from aptune.engine.run_lock import hold_run_lock
from aptune.engine.run_outputs import RunLogger
from aptune.pretrain.config import PretrainConfig
from aptune.pretrain.data import UnlabelledClips, find_videos
from aptune.pretrain.masking import MASKS
from aptune.pretrain.model import PretrainVideoMAE, build_pretrain_model, masked_mse, pixel_targets

log = logging.getLogger("aptune")
PRETRAIN_FILE = "pretrain.safetensors"


class MaskedVideoObjective(nn.Module):
    """clips -> masked-reconstruction loss; draws the tube masks itself.

    Masks come from a generator reseeded by :meth:`set_epoch` with (seed, epoch, rank), so
    the masks of an epoch do not depend on what ran before it: resuming reproduces them.
    """

    def __init__(
        self,
        model: PretrainVideoMAE,
        mask_ratio: float,
        norm_pix: bool,
        seed: int,
        rank: int,
        mask_type: str = "tube",
    ) -> None:
        super().__init__()
        self.model, self.mask_ratio, self.norm_pix = model, mask_ratio, norm_pix
        self.draw_mask = MASKS[mask_type]
        self.seed, self.rank = seed, rank
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(seeds.mask_seed(self.seed, epoch, self.rank))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        if clips.shape[0] == 0:  # every video of the batch was unreadable: zero loss
            return sum(p.sum() for p in self.model.parameters()) * 0.0
        mask = self.draw_mask(self.model.grid, self.mask_ratio, clips.shape[0], self.generator)
        mask = mask.to(clips.device)
        with torch.no_grad():
            target = pixel_targets(
                clips, self.model.tubelet_size, self.model.patch_size, self.norm_pix
            )  # (B, N, P) fp32
        pred = self.model(clips, mask)  # (B, N_mask, P)
        return masked_mse(pred, target, mask)


class _MaskStream:
    """The objective's mask generator as the driver's per-rank stream: a run resumed
    mid-epoch draws the masks the uninterrupted one drew."""

    def __init__(self, objective: MaskedVideoObjective) -> None:
        self.objective = objective

    def reseed(self, epoch: int) -> None:
        self.objective.set_epoch(epoch)

    def state(self) -> dict:
        return {"mask": self.objective.generator.get_state()}

    def restore(self, own: dict) -> None:
        if own.get("mask") is not None:
            self.objective.generator.set_state(own["mask"])


def _save_config(cfg: PretrainConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    os.replace(tmp, path)


def build_from_config(cfg: PretrainConfig) -> PretrainVideoMAE:
    return build_pretrain_model(
        cfg.model, num_frames=cfg.num_frames, img_size=cfg.input_size,
        tubelet_size=cfg.tubelet_size, decoder_dim=cfg.decoder_dim,
        decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads,
        drop_path=cfg.drop_path,
    )  # fmt: skip


def _train_step(
    cfg: PretrainConfig, model: nn.Module, objective: nn.Module, info: DistInfo, steps: int
) -> TrainStep:
    world = info.world_size
    lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.update_freq, world)
    min_lr = scaled_lr(cfg.min_lr, cfg.batch_size, cfg.update_freq, world)
    warmup_lr = scaled_lr(cfg.warmup_lr, cfg.batch_size, cfg.update_freq, world)
    optimizer = build_optimizer(
        model, opt="adamw", lr=lr, weight_decay=cfg.weight_decay, opt_eps=cfg.opt_eps,
        opt_betas=cfg.opt_betas,
    )  # fmt: skip
    lr_values = cosine_schedule(
        lr, min_lr, cfg.epochs, steps, cfg.warmup_epochs, warmup_lr, cfg.warmup_steps
    )
    wd_values = cosine_schedule(cfg.weight_decay, cfg.weight_decay, cfg.epochs, steps)
    precision = (
        Precision("bf16", info.device.type) if cfg.bf16 else resolve_precision("fp32", info.device)
    )
    return TrainStep(
        model=objective, optimizer=optimizer, lr_values=lr_values, wd_values=wd_values,
        steps_per_epoch=steps, update_freq=cfg.update_freq, clip_grad=cfg.clip_grad,
        precision=precision, criterion=lambda loss, _labels: loss,
        max_steps=cfg.max_steps_per_epoch,
    )  # fmt: skip


def run_pretrain(cfg: PretrainConfig) -> int:
    """``aptune pretrain``: the job in this process's distributed group."""
    info = init_distributed(cfg.device, cfg.local_rank)
    try:
        pretrain(cfg, info)
    finally:
        cleanup(info)
    return 0


def pretrain(cfg: PretrainConfig, info: DistInfo | None = None) -> dict:
    """Run (or resume) a pre-training job; returns a summary of the run."""
    info = info or DistInfo()
    out = T.run_dir(cfg.output_dir)
    with hold_run_lock(out, info.is_main):  # one writer per folder (RunLockedError)
        return _pretrain(cfg, info, out)


def _pretrain(cfg: PretrainConfig, info: DistInfo, out: Path) -> dict:
    """The job itself, run while rank 0 holds the folder's lock."""
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _save_config(cfg, out / "config.yaml")
    T.seed_everything(seeds.process_seed(cfg.seed, info.rank))
    videos, source = find_videos(cfg.data_path, cfg.data_root)
    dataset = UnlabelledClips(
        videos, cfg.num_frames, cfg.sampling_rate, cfg.input_size, flip=cfg.flip,
        scale=(cfg.min_crop_scale, 1.0), backend=cfg.decoder, strict=cfg.strict_data,
    )  # fmt: skip
    model = build_from_config(cfg).to(info.device)
    objective = MaskedVideoObjective(model, cfg.mask_ratio, cfg.norm_pix_loss, cfg.seed,
                                     info.rank, cfg.mask_type).to(info.device)  # fmt: skip
    ddp = T.wrap_ddp(objective, info)
    steps = T.steps_per_epoch(len(dataset), cfg.batch_size, cfg.update_freq, info.world_size)
    ts = _train_step(cfg, model, ddp, info, steps)
    # pre-training has no --pin_mem flag: host memory is never pinned
    loader = T.EpochLoader(dataset, info, train=True, seed=cfg.seed, batch_size=cfg.batch_size,
                           num_workers=cfg.num_workers, pin_mem=False)  # fmt: skip
    n_params = sum(p.numel() for p in model.parameters())
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    if info.is_main:
        log.info("pre-training %s (encoder %s params, total %s) on %d videos from %s; "
                 "%d steps/epoch, %s masking ratio %.2f, tokens %s, precision %s",
                 cfg.model, f"{n_enc:,}", f"{n_params:,}", len(videos), source, steps,
                 cfg.mask_type, cfg.mask_ratio, model.grid, ts.precision.name)  # fmt: skip
    resumed = resume(latest_verified(out) if cfg.auto_resume else None, True, model, ts, info, 0)
    logger = RunLogger(out, cfg.log_dir, info.is_main, resumed.epoch)
    config, started = cfg.to_dict(), time.perf_counter()

    def end_epoch(epoch: int, stats: EpochStats, extra: dict) -> dict:
        record = epoch_record(epoch, stats, info)
        record["time_s"] = round(time.perf_counter() - started, 1)
        if info.is_main:
            log.info("epoch %d: loss %.4f, lr %.2e, %.1f clips/s", epoch, stats.loss,
                     stats.lr, stats.clips_per_s)  # fmt: skip
            logger.epoch(record)
        return extra

    saver = Saver(info, out, model, ts, config, trainable_only=False)
    opts = FitOptions(cfg.epochs, cfg.seed, save_ckpt_freq=cfg.save_ckpt_freq,
                      progress=not cfg.no_progress)  # fmt: skip
    fit(ts, loader, info, saver, logger, _MaskStream(objective), end_epoch, opts, resumed,
        {"kind": "pretrain"})  # fmt: skip
    history = logger.history()
    logger.close()
    summary = {
        "model": cfg.model,
        "epochs": cfg.epochs,
        "final_loss": history[-1]["train_loss"] if history else None,
        "loss_per_epoch": [round(h["train_loss"], 4) for h in history],
        "videos": len(videos),
        "encoder_params": n_enc,
        "time_s_this_session": round(time.perf_counter() - started, 1),
    }
    if info.is_main:
        names = ("model", "num_frames", "input_size", "tubelet_size", "sampling_rate",
                 "mask_type", "mask_ratio")  # fmt: skip
        arch = {k: config[k] for k in names if k in config}
        arch.update(decoder_dim=model.decoder.norm.normalized_shape[0],
                    decoder_depth=len(model.decoder.blocks))  # fmt: skip
        save_model_weights(out / PRETRAIN_FILE, model, trainable_only=False,
                           metadata={"kind": "videomae-pretrain", "architecture": arch,
                                     "summary": summary})  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("pre-trained weights: %s (VideoMAE pre-training layout; fine-tune with "
                 "aptune train --model %s --finetune %s)", out / PRETRAIN_FILE, cfg.model,
                 out / PRETRAIN_FILE)  # fmt: skip
    barrier(info)
    return summary


__all__ = ["MaskedVideoObjective", "PRETRAIN_FILE", "pretrain", "run_pretrain"]
