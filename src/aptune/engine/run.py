"""Training and evaluation runs: resume, epochs, validation, checkpoints, final test.

What a run folder holds: ``config.yaml`` (resolved flags), ``log.txt`` (one JSON line per
epoch, as the reference), ``tb/`` (TensorBoard scalars), ``checkpoint-NNNN/`` (latest
complete states, written atomically), ``checkpoint-NNNN-stepSSSSSS/`` (mid-epoch:
``--save_ckpt_steps`` or preemption), ``checkpoint-best/``, and after the final test
``metrics.json``, ``predictions.jsonl``, ``per_class.json``, ``curves.png`` and
``confusion.png``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from aptune.config import ConfigError, RunConfig, save_config
from aptune.engine import builders as T
from aptune.engine import seeds
from aptune.engine.checkpoint import (
    BEST_NAME,
    STATE_FILE,
    ResumeError,
    check_complete,
    find_latest_checkpoint,
    latest_verified,
    load_model_weights,
    save_best,
    save_training_state,
)
from aptune.engine.distributed import (
    DistInfo,
    all_gather_objects,
    cleanup,
    init_distributed,
    unwrap,
    wait_for_main,
)
from aptune.engine.eval_lists import check_eval_lists, frozen_backbone_warning
from aptune.engine.fit import FitOptions, Resumed, epoch_record, fit, resume
from aptune.engine.html_report import write_report
from aptune.engine.loop import (
    EpochStats,
    Precision,
    predict_views,
)
from aptune.engine.metrics import EvalResult, evaluate_probs, merge_views, write_predictions
from aptune.engine.run_lock import hold_run_lock
from aptune.engine.run_outputs import RunLogger, write_final_reports
from aptune.engine.segment_merge import TokenMerge, token_merge
from aptune.engine.speed import prepare_model_for_speed
from aptune.models.vit import VisionTransformer
from aptune.recipes import inert_flag_notes, recipe_summary
from aptune.sharing.adapter_load import adapter_source, read_adapter
from aptune.tuning import parameter_report

log = logging.getLogger("aptune")


def evaluate_split(
    model, loader, info: DistInfo, precision: Precision, cfg, desc: str,
    merge: TokenMerge | None = None,
) -> EvalResult | None:  # fmt: skip
    """Evaluate every rank's shard (the loader's ``DistributedSampler`` under DDP: no rank
    waits through another's whole pass) and merge on rank 0, where the sampler's padded
    duplicates collapse by (video, view); None on the other ranks. ``merge``: the loader
    yields whole videos whose segments join as tokens (keys are (video, crop))."""
    net = unwrap(model)
    mine = predict_views(net, loader, info, precision, not cfg.job.no_progress, desc, merge)
    records = all_gather_objects(mine, info)
    if not info.is_main:
        return None
    ids, probs, labels, views = merge_views(records)
    views = views * merge.segments if merge is not None else views  # clips seen per video
    return evaluate_probs(ids, probs, labels, views, cfg.data.nb_classes)


def _resume(cfg, model, ts, out: Path, info: DistInfo) -> Resumed:
    """--resume, else with --auto_resume the newest checkpoint whose sha256s verify."""
    path, verified = (Path(cfg.job.resume), False) if cfg.job.resume else (None, False)
    if path is None and cfg.job.auto_resume:
        path, verified = latest_verified(out), True
    return resume(path, verified, model, ts, info, cfg.job.start_epoch)


def _best_so_far(out: Path, resumed: Resumed, history: list[dict]) -> dict:
    """The best validation before ``resumed.epoch``, as an uninterrupted run has it there.

    An epoch checkpoint is written before its validation, so its ``best`` may miss that
    epoch's: the validation lines of ``log.txt`` after it are replayed (a strictly higher
    top-1 wins, as in ``_validate``), then ``checkpoint-best`` (written before the line is
    amended) fills in a kill between the two."""
    best = resumed.extra.get("best", {"top1": -1.0, "epoch": -1})
    for h in history:
        if best["epoch"] < h.get("epoch", -1) < resumed.epoch and "val_top1" in h:
            if h["val_top1"] > best["top1"]:
                best = {"top1": h["val_top1"], "top5": h.get("val_top5"), "epoch": h["epoch"]}
    folder = out / BEST_NAME
    try:
        check_complete(folder, hashes=False)
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        found = state["extra"]["best"]
    except Exception:  # no (complete) best checkpoint: the replayed value stands
        return best
    return found if best["epoch"] < found["epoch"] < resumed.epoch else best


def train(cfg: RunConfig) -> dict:
    """The ``aptune train`` / ``run_class_apt.py`` job; returns the final metrics.

    SIGTERM / SIGUSR1 / Ctrl-C end it after the current optimiser step with a checkpoint
    and ``SystemExit(128 + signum)``; rerunning the same command continues from there.
    """
    info = init_distributed(cfg.job.device, cfg.job.local_rank, cfg.job.dist_timeout)
    out = T.run_dir(cfg.job.output_dir)
    try:
        with hold_run_lock(out, info.is_main):  # one writer per folder (RunLockedError)
            return _train(cfg, info, out)
    finally:
        cleanup(info)


class Saver:
    """Rank 0 writes training state; every rank then meets it on the CPU group
    (``wait_for_main``: a slow disk is not a dead rank)."""

    def __init__(self, info: DistInfo, out: Path, model, ts, config: dict,
                 trainable_only: bool, keep_last: int = 2) -> None:  # fmt: skip
        self.info, self.out, self.model, self.ts = info, out, model, ts
        self.kw = dict(config=config, trainable_only=trainable_only, keep_last=keep_last)
        self.last: tuple[int, int | None] | None = None  # (epoch, step) of the last save
        self.folder: Path | None = None

    def state(self, epoch: int, extra: dict, step: int | None = None) -> Path | None:
        if self.info.is_main:
            ts = self.ts
            self.folder = save_training_state(self.out, epoch, self.model, ts.optimizer,
                                              ts.scaler, ts.ema, extra=extra, step=step,
                                              **self.kw)  # fmt: skip
        self.last = (epoch, step)
        wait_for_main(self.info, f"the checkpoint of epoch {epoch}")
        return self.folder

    def best(self, epoch: int, extra: dict) -> None:
        kw = {k: v for k, v in self.kw.items() if k != "keep_last"}
        save_best(self.out, epoch, self.model, extra=extra, **kw)


class _Saver(Saver):
    """A fine-tuning run's saver: its flags say what is saved and how many are kept."""

    def __init__(self, cfg, info: DistInfo, out: Path, model, ts, full: bool) -> None:
        super().__init__(info, out, model, ts, cfg.to_dict(), not full, cfg.job.keep_ckpts)


class _Mixup:
    """Mixup's generator as the driver's per-rank stream (none without mixup)."""

    def __init__(self, ts, seed: int, rank: int) -> None:
        self.ts, self.seed, self.rank = ts, seed, rank

    def reseed(self, epoch: int) -> None:
        if self.ts.mixup is not None:
            self.ts.mixup.rng = np.random.default_rng(seeds.mixup_seed(self.seed, epoch, self.rank))

    def state(self) -> dict:
        mixup = self.ts.mixup.rng.bit_generator.state if self.ts.mixup is not None else None
        return {"mixup": json.dumps(mixup)}

    def restore(self, own: dict) -> None:
        if self.ts.mixup is not None and own.get("mixup"):
            self.ts.mixup.rng.bit_generator.state = json.loads(own["mixup"])


def _log_recipe(cfg: RunConfig, info: DistInfo) -> None:
    """What will be trained, value by value, and every flag that changes nothing."""
    values = cfg.to_dict()
    log.info("%s", recipe_summary(values))
    for note in inert_flag_notes(values):
        log.warning("%s", note)
    if cfg.job.enable_deepspeed:
        how = ("fp16 autocast, loss scale 2^7 doubling after 128 clean steps"
               if info.device.type == "cuda" and cfg.optim.precision == "auto"
               else f"--precision {cfg.optim.precision}")  # fmt: skip
        clip = f"--clip_grad {cfg.optim.clip_grad}" if cfg.optim.clip_grad else "no clipping"
        log.info("--enable_deepspeed: DeepSpeed is not used; the built-in engine trains its "
                 "recipe (DDP, %s, %s)", how, clip)  # fmt: skip


def _train(cfg: RunConfig, info: DistInfo, out: Path) -> dict:
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out)
        _log_recipe(cfg, info)
    T.seed_everything(seeds.process_seed(cfg.job.seed, info.rank))
    splits = ("train",) + (() if cfg.job.disable_eval_during_finetuning else ("val",)) + ("test",)
    on_device = T.augments_on_device(cfg, info.device)
    datasets = T.build_datasets(cfg, splits, defer_augment=on_device)
    excluded = check_eval_lists(cfg, datasets, info, out)  # before any training
    names = datasets["train"].class_names
    if info.is_main and names:
        (out / "classes.txt").write_text("\n".join(names) + "\n")
    model = T.build_run_model(cfg, info)
    report = parameter_report(model)
    precision = T.run_precision(cfg, info.device)
    warning = frozen_backbone_warning(cfg, T.trains_backbone(model))
    if info.is_main:
        log.info("model %s, transfer_type %s, precision %s, %d process(es) on %s\n%s",
                 cfg.model.model, cfg.model.transfer_type, precision.name, info.world_size,
                 info.device, report)  # fmt: skip
        if warning:
            log.warning("%s", warning)
    net = prepare_model_for_speed(model, cfg, info, precision, run_dir=out)  # attention etc.
    ddp_model = T.wrap_ddp(net, info)
    o = cfg.optim
    steps = T.steps_per_epoch(len(datasets["train"]), o.batch_size, o.update_freq,
                              info.world_size)  # fmt: skip
    ts = T.build_train_step(cfg, model, ddp_model, info, steps)
    if on_device:
        ts.augment = T.build_device_augment(cfg, info)
    if info.is_main:
        log.info(
            "training clips augmented %s",
            f"on {info.device} in the main process (workers decode only)"
            if on_device
            else "in the data loading workers",
        )
    # training and validation keep their workers across epochs; the test runs once
    merge = token_merge(cfg)
    loaders = {s: T.views_loader(d, cfg, info, merge) if s == "test" else
               T.run_loader(d, cfg, info, train=s == "train", persistent=True)
               for s, d in datasets.items()}  # fmt: skip
    resumed = _resume(cfg, model, ts, out, info)
    logger = RunLogger(out, cfg.job.log_dir, info.is_main, resumed.epoch)
    best = _best_so_far(out, resumed, logger.history())
    saver = _Saver(cfg, info, out, model, ts, T.saves_full_weights(model, cfg))
    started = time.perf_counter()
    opts = FitOptions(cfg.optim.epochs, cfg.job.seed, cfg.job.save_ckpt, cfg.job.save_ckpt_freq,
                      cfg.job.save_ckpt_steps, not cfg.job.no_progress)  # fmt: skip

    notes = {"warning": warning} if warning else {}

    def end_epoch(epoch: int, stats: EpochStats, extra: dict) -> dict:
        record = epoch_record(epoch, stats, info, n_parameters=report.trainable, **notes)
        if info.is_main:
            logger.epoch(record)  # validation amends this line after the checkpoint
        return extra

    def evaluate(epoch: int, stats: EpochStats, extra: dict) -> dict:
        best = _validate(cfg, info, epoch, loaders, ddp_model, precision, extra["best"],
                         saver, logger)  # fmt: skip
        return {"best": best}

    best = fit(ts, loaders["train"], info, saver, logger, _Mixup(ts, cfg.job.seed, info.rank),
               end_epoch, opts, resumed, {"best": best}, evaluate)["best"]  # fmt: skip
    result = {"best_val": best, "train_time_s": round(time.perf_counter() - started, 2)}
    result.update(_notes(cfg, warning, excluded))
    test = evaluate_split(ddp_model, loaders["test"], info, precision, cfg, "test", merge)
    if test is not None:
        ds = datasets["test"]
        write_predictions(test, out / "predictions.jsonl", ds.video_paths, ds.class_names)
        result.update({"test": test.summary(), "parameters": report.as_dict()})
        write_final_reports(out, test, ds.class_names, result, logger.history())
        log.info("test: top-1 %.2f%%, top-5 %.2f%% over %d videos x %d views",
                 test.top1, test.top5, test.num_videos, test.views_per_video)  # fmt: skip
    logger.close()
    if info.is_main:
        try:
            log.info("report: %s", write_report(out))
        except Exception as exc:  # a report must not fail a finished run
            log.warning("report.html not written: %s", " ".join(str(exc).split()))
    return result


def _notes(cfg: RunConfig, warning: str | None, excluded: list[str]) -> dict:
    """What ``metrics.json`` and the report must say beside the numbers."""
    notes: dict = {"warnings": [warning]} if warning else {}
    if cfg.data.eval_skip_unreadable:
        notes["eval_excluded"] = {"count": len(excluded), "videos": excluded}
    return notes


def _validate(cfg, info, epoch, loaders, ddp_model, precision, best, saver: Saver,
              logger) -> dict:  # fmt: skip
    """Validation (after the epoch's checkpoint), the best checkpoint and the validation
    fields of the epoch's log line; returns the best."""
    if "val" not in loaders:
        return best
    val = evaluate_split(ddp_model, loaders["val"], info, precision, cfg, "val")
    if val is None:
        return best
    if val.top1 > best["top1"]:
        best = {"top1": val.top1, "top5": val.top5, "epoch": epoch}
        if cfg.job.save_ckpt:
            saver.best(epoch, {"best": best})
    logger.amend({f"val_{k}": v for k, v in val.summary().items()})
    return best


def run_checkpoint(run: Path, which: str = "last") -> tuple[RunConfig, Path]:
    """A run's config and verified checkpoint folder (``last`` or ``best``); every sha256
    of the folder is checked (``ResumeError`` naming a corrupt ``best``)."""
    cfg_path = run / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(f"{run}: no config.yaml; give the output_dir of an aptune train run")
    cfg = RunConfig.from_yaml(cfg_path)
    if which == "best":
        ckpt = run / BEST_NAME
        if (ckpt / "model.safetensors").is_file():
            check_complete(ckpt)  # corrupt: one line naming it (no older "best" to use)
    else:
        ckpt = latest_verified(run)  # corrupt ones named and skipped
    if ckpt is None or not (ckpt / "model.safetensors").is_file():
        raise ConfigError(f"{run}: no complete {which} checkpoint; train the run first")
    return cfg, ckpt


def load_trained_model(
    run: Path, which: str, info: DistInfo, overrides: dict | None = None
) -> tuple[RunConfig, VisionTransformer]:
    """The run's config (with ``overrides`` by flag name) and its model with the trained
    weights, in eval mode on ``info.device``; ``run`` may also be an adapter folder or the
    Hub id of one (``aptune export --format adapter``, ``aptune push``)."""
    adapter = adapter_source(run)  # an exported adapter (folder or Hub id) reads as a run
    if adapter is not None:
        spec = read_adapter(adapter)  # its base found and checked
        cfg, ckpt = spec.config, spec.weights
    else:
        cfg, ckpt = run_checkpoint(run, which)
    # the decode cache is a training speed-up; eval/predict read each video once anyway
    cfg = cfg.replace(decode_cache=None, **(overrides or {}))
    model = T.build_run_model(cfg, info)
    loaded = load_model_weights(ckpt, model)  # a checkpoint folder or an adapter's file
    if not cfg.model.finetune and len(loaded) < len(model.state_dict()):
        log.warning(
            "%s: a %s run without --finetune saved only its trainable tensors (before aptune "
            "kept the random frozen backbone too); this model is not the trained one; "
            "train it again",
            ckpt, cfg.model.transfer_type,
        )  # fmt: skip
    model.eval()
    return cfg, model


def _test_all_views(cfg: RunConfig, model, info: DistInfo):
    """(result on rank 0 or None, test dataset): every test view of the run's test list."""
    ds = T.build_datasets(cfg, ("test",))["test"]
    merge = token_merge(cfg)
    loader = T.views_loader(ds, cfg, info, merge)
    precision = T.run_precision(cfg, info.device)
    model = prepare_model_for_speed(model, cfg, info, precision, train=False)
    return evaluate_split(model, loader, info, precision, cfg, "test", merge), ds


def evaluate_run(
    run: Path, which: str = "last", overrides: dict | None = None, output: Path | None = None
) -> dict:
    """``aptune eval RUN``: all test views of the run's test list (or a new --data_path);
    ``overrides`` change run options by flag name, ``output`` is where results go
    (default: the run folder)."""
    info = init_distributed("auto")
    try:
        if output is None and not Path(run).is_dir():
            raise ConfigError(f"{run}: not a local folder (a Hub adapter?); give --output DIR")
        cfg, model = load_trained_model(run, which, info, overrides)
        res, ds = _test_all_views(cfg, model, info)
        if res is None:
            return {}
        out = Path(output) if output is not None else Path(run)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(res, out / "eval_predictions.jsonl", ds.video_paths, ds.class_names)
        summary = {"test": res.summary(), "checkpoint": str(Path(run) / which)}
        per_class = dict(zip(ds.class_names or map(str, range(cfg.data.nb_classes)), res.per_class))
        (out / "eval_metrics.json").write_text(
            json.dumps({**summary, "per_class": per_class}, indent=2)
        )
        np.savetxt(out / "eval_confusion.csv", res.confusion, fmt="%d", delimiter=",")
        return {**summary, "per_class": per_class}
    finally:
        cleanup(info)


def evaluate_config(cfg: RunConfig) -> dict:
    """The reference's ``--eval``: test --finetune, or the newest checkpoint of --resume /
    --output_dir, on all test views; writes predictions.jsonl into --output_dir."""
    info = init_distributed(cfg.job.device, cfg.job.local_rank, cfg.job.dist_timeout)
    try:
        model = T.build_run_model(cfg, info)
        ckpt = Path(cfg.job.resume) if cfg.job.resume else None
        if ckpt is not None and not ckpt.exists():
            raise ResumeError(f"--resume {ckpt}: not found; give a checkpoint folder")
        folder = ckpt if ckpt is None or ckpt.is_dir() else ckpt.parent
        if folder is not None and (folder / "COMPLETE").is_file():
            check_complete(folder)  # an aptune checkpoint folder: verify its sha256s
        if ckpt is None and cfg.job.output_dir and cfg.job.auto_resume:
            ckpt = find_latest_checkpoint(Path(cfg.job.output_dir))
        if ckpt is not None:
            weights = ckpt / "model.safetensors" if ckpt.is_dir() else ckpt
            load_model_weights(weights, model)
            log.info("evaluating weights of %s", weights)
        res, ds = _test_all_views(cfg, model, info)
        if res is None:
            return {}
        if cfg.job.output_dir:
            out = Path(cfg.job.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_predictions(res, out / "predictions.jsonl", ds.video_paths, ds.class_names)
        log.info("test: top-1 %.2f%%, top-5 %.2f%% over %d videos x %d views",
                 res.top1, res.top5, res.num_videos, res.views_per_video)  # fmt: skip
        return {"test": res.summary()}
    finally:
        cleanup(info)
