"""Run configuration: every flag of the reference's ``run_class_apt.py``, plus YAML files.

Flag names, defaults and meanings follow the reference (VideoMAE's fine-tuning script
with APT's additions), so its launch scripts run unchanged. ``--config run.yaml`` sets
defaults from a file; flags given on the command line override it. The resolved
configuration is saved beside the run as ``config.yaml``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import yaml

from aptune.recipes import RECIPES, recipe_values

DATA_SETS = ("Kinetics-400", "SSV2", "UCF101", "HMDB51", "image_folder")


class ConfigError(ValueError):
    """A flag or config-file value that cannot work; the message names it."""


def _bool_pair(g: argparse._ArgumentGroup, name: str, default: bool, help: str) -> None:
    """``--name`` / ``--no_name`` pair (the reference's style for pin_mem, auto_resume ...)."""
    g.add_argument(f"--{name}", dest=name, action="store_true", help=help)
    g.add_argument(f"--no_{name}", dest=name, action="store_false", help=f"disable --{name}")
    g.set_defaults(**{name: default})


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and tuning method")
    g.add_argument(
        "--model",
        default="vit_base_patch16_224",
        help="backbone: vit_{nano,micro,tiny,small,base,large,huge}_patch16_224",
    )
    g.add_argument(
        "--transfer_type",
        default="prompt",
        help="prompt (APT) | linear | end2end | "
        "random | vpt_shallow | vpt_deep | adapter | lora | bitfit; combine with '+'",
    )
    g.add_argument(
        "--prompt_start", type=int, default=None, help="first block with APT prompts (default: 0)"
    )
    g.add_argument(
        "--prompt_end",
        type=int,
        default=None,
        help="last block with APT prompts, inclusive (default: the last block)",
    )
    g.add_argument("--prompt_num_tokens", type=int, default=5, help="APT prompt tokens per layer")
    g.add_argument("--prompt_dropout", type=float, default=0.0, help="dropout on APT prompts")
    g.add_argument(
        "--prompt_reparam",
        action="store_true",
        help="APT re-parameterisation: prompts scaled by max(scale, 1), scale learned",
    )
    g.add_argument("--input_size", type=int, default=224, help="frame crop size in pixels")
    g.add_argument("--num_frames", type=int, default=16, help="frames per clip")
    g.add_argument("--tubelet_size", type=int, default=2, help="frames per patch token")
    g.add_argument("--fc_drop_rate", type=float, default=0.0, help="dropout before the head")
    g.add_argument(
        "--drop",
        type=float,
        default=0.0,
        help="dropout after the position embedding, each attention projection and each MLP",
    )
    g.add_argument(
        "--attn_drop_rate", type=float, default=0.0, help="dropout on the attention probabilities"
    )
    g.add_argument("--drop_path", type=float, default=0.0, help="stochastic depth rate")
    g.add_argument("--init_scale", type=float, default=0.001, help="head init multiplier")
    g.add_argument(
        "--finetune",
        default="",
        help="checkpoint to start from: VideoMAE v1/V2 .pth, reference APT .pth, DeepSpeed "
        "folder, Hugging Face folder or Hub id (ORG/NAME[@REV], hf://ORG/NAME), "
        "aptune .safetensors or run folder",
    )
    g.add_argument("--model_key", default="model|module", help="keys to look under, first wins")
    g.add_argument(
        "--model_prefix",
        default="",
        help="key prefix of the --finetune weights, stripped on loading (e.g. backbone.)",
    )
    g.add_argument(
        "--use_checkpoint", action="store_true", help="activation checkpointing (not yet: logged)"
    )
    g.add_argument(
        "--use_mean_pooling",
        action="store_true",
        default=True,
        help="mean pooling head (always on, as in VideoMAE fine-tuning)",
    )
    g.add_argument(
        "--attn_impl",
        default="auto",
        choices=["auto", "sdpa", "plain", "recompute"],
        help="attention kernel: auto times the candidates on the first batch and keeps the "
        "fastest; sdpa = fused scaled_dot_product_attention; plain = matmul + softmax, "
        "probabilities kept for backward (most memory); recompute = SDPA's forward and a "
        "backward recomputing the probabilities with GEMMs (CPU; SDPA elsewhere)",
    )
    g.add_argument(
        "--cos_attn",
        action="store_true",
        help="cosine attention (VideoMAE V2 style; detected from the checkpoint otherwise)",
    )
    g.add_argument(
        "--compile", action="store_true", help="wrap the model in torch.compile (off by default)"
    )


def add_optim_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (lr values are per 256 samples)")
    g.add_argument(
        "--recipe",
        default=None,
        choices=list(RECIPES),
        help="named recipe (default: reference%(default).0s): reference = the reference "
        "run_class_apt.py's defaults (mixup, erasing and drop_path off, SGD); "
        "videomae-finetune = VideoMAE's full fine-tuning recipe (AdamW lr 1e-3 wd 0.05, "
        "layer decay 0.75, mixup 0.8, cutmix 1.0, erasing 0.25, drop_path 0.1, 30 epochs); "
        "--config and flags override its values",
    )
    g.add_argument("--batch_size", type=int, default=16, help="clips per process per step")
    g.add_argument("--batch_size_val", type=int, default=14, help="evaluation batch per process")
    g.add_argument("--epochs", type=int, default=100, help="training epochs")
    g.add_argument("--update_freq", type=int, default=1, help="gradient accumulation steps")
    g.add_argument("--opt", default="sgd", help="adamw | adam | sgd | momentum")
    g.add_argument("--opt_eps", type=float, default=1e-8, help="optimizer epsilon (Adam)")
    g.add_argument("--opt_betas", type=float, nargs="+", default=None, help="e.g. 0.9 0.999")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--clip_grad", type=float, default=None, help="max gradient norm")
    g.add_argument(
        "--weight_decay",
        type=float,
        default=1e-3,
        help="weight decay (not on 1-D tensors, biases, pos_embed, cls_token)",
    )
    g.add_argument("--weight_decay_end", type=float, default=None, help="cosine wd target")
    g.add_argument("--lr", type=float, default=0.1, help="base lr per 256 samples")
    g.add_argument(
        "--layer_decay", type=float, default=1.0, help="layer-wise lr decay (1.0: none)"
    )
    g.add_argument(
        "--head_lr_scale",
        type=float,
        default=1.0,
        help="lr multiplier for the classifier (fc_norm, head); e.g. 0.1 lets APT's prompts "
        "train at a high --lr while the head keeps a linear probe's lr (not in the reference)",
    )
    g.add_argument(
        "--warmup_lr",
        type=float,
        default=None,
        help="lr at the start of warmup, per 256 samples (default: warmup starts at 0, as in "
        "the reference, whose schedule never reads this flag)",
    )
    g.add_argument("--min_lr", type=float, default=1e-6, help="lr at the end of the cosine")
    g.add_argument("--warmup_epochs", type=int, default=10, help="linear warmup epochs")
    g.add_argument("--warmup_steps", type=int, default=-1, help="overrides --warmup_epochs if >0")
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0 = off)")
    g.add_argument(
        "--cutmix_minmax",
        type=float,
        nargs="+",
        default=None,
        help="cutmix box side range as fractions of the frame, e.g. 0.2 0.8 (switches cutmix on; "
        "the box then ignores --cutmix alpha)",
    )
    g.add_argument(
        "--mixup_prob", type=float, default=0.0, help="chance to mix a batch (0: never)"
    )
    g.add_argument(
        "--mixup_switch_prob",
        type=float,
        default=0.0,
        help="chance of cutmix instead of mixup when both are on",
    )
    g.add_argument("--mixup_mode", default="batch", choices=["batch"], help="one lambda per batch")
    g.add_argument("--model_ema", action="store_true", help="keep an EMA of the weights")
    g.add_argument("--model_ema_decay", type=float, default=0.9999, help="EMA decay per step")
    g.add_argument(
        "--model_ema_force_cpu", action="store_true", help="accepted (EMA on model device)"
    )
    g.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto: fp16 autocast on CUDA, fp32 on CPU; bf16 is fast on recent CPUs",
    )
    g.add_argument("--bf16", action="store_true", help="same as --precision bf16")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data_set",
        default="Kinetics-400",
        choices=DATA_SETS,
        help="selects sampling (SSV2: segments) and flipping (not for SSV2)",
    )
    g.add_argument("--data_path", default="", help="folder with train.csv, val.csv, test.csv")
    g.add_argument("--eval_data_path", default=None, help="folder with val/test lists")
    g.add_argument("--data_root", default="", help="prefix for relative video paths")
    g.add_argument("--nb_classes", type=int, default=400, help="number of classes (checked)")
    g.add_argument("--num_segments", type=int, default=1, help="accepted for compatibility")
    g.add_argument("--sampling_rate", type=int, default=4, help="frame stride (dense sampling)")
    g.add_argument(
        "--sampling",
        default="auto",
        choices=["auto", "dense", "segment"],
        help="frame sampling; auto: segment for SSV2, dense otherwise",
    )
    g.add_argument("--num_sample", type=int, default=2, help="repeated augmentation per video")
    g.add_argument("--short_side_size", type=int, default=224, help="test: short side resize")
    g.add_argument("--test_num_segment", type=int, default=5, help="test clips per video")
    g.add_argument("--test_num_crop", type=int, default=3, help="test crops per clip")
    g.add_argument("--is_aa", action="store_true", help="apply RandAugment (--aa)")
    g.add_argument("--aa", default="rand-m7-n4-mstd0.5-inc1", help="timm RandAugment string")
    g.add_argument("--color_jitter", type=float, default=0.4, help="accepted (unused, as ref)")
    g.add_argument("--train_interpolation", default="bicubic", help="resize filter (train)")
    g.add_argument("--crop_pct", type=float, default=None, help="accepted for compatibility")
    g.add_argument(
        "--crop_scale",
        type=float,
        nargs=2,
        default=[0.08, 1.0],
        help="area range of the train random resized crop (aptune extension)",
    )
    g.add_argument("--reprob", type=float, default=0.0, help="random erasing probability")
    g.add_argument("--remode", default="pixel", help="random erasing fill: pixel|rand|const")
    g.add_argument("--recount", type=int, default=1, help="random erasing boxes per clip")
    g.add_argument("--resplit", action="store_true", default=False, help="accepted (unused)")
    g.add_argument(
        "--imagenet_default_mean_and_std",
        action="store_true",
        default=True,
        help="ImageNet mean/std normalisation (always on)",
    )
    g.add_argument(
        "--decoder",
        default="auto",
        choices=["auto", "pyav", "decord", "frames"],
        help="video decoding backend",
    )
    g.add_argument(
        "--strict_data",
        action="store_true",
        help="fail on the first unreadable training video instead of skipping it",
    )
    g.add_argument(
        "--decode_cache",
        default=None,
        metavar="DIR",
        help="decode each video once into DIR (raw frames: frames x H x W x 3 bytes per "
        "video) and read it from there in later epochs and runs; for small or "
        "low-resolution datasets where decoding costs more than the model step",
    )
    g.add_argument(
        "--aug_device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where training clips are augmented: cpu = in the DataLoader workers (the "
        "reference's way); cuda = batched tensor ops on the training GPU in the main "
        "process, workers only decode; auto = the training device (cpu on CPU-only runs)",
    )
    g.add_argument("--num_workers", type=int, default=10, help="data loading processes")
    _bool_pair(g, "pin_mem", True, "pin host memory for faster GPU transfer")


def add_run_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run, checkpoints, distributed")
    g.add_argument("--config", default=None, help="YAML file of flag values; flags override it")
    g.add_argument("--output_dir", default="", help="run folder: checkpoints, logs, reports")
    g.add_argument("--log_dir", default=None, help="TensorBoard folder (default: output_dir/tb)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--seed", type=int, default=0, help="seed: same seed, same run on CPU")
    g.add_argument("--resume", default="", help="checkpoint folder to resume from")
    _bool_pair(g, "auto_resume", True, "resume from the newest complete checkpoint in output_dir")
    _bool_pair(g, "save_ckpt", True, "write checkpoints")
    g.add_argument("--save_ckpt_freq", type=int, default=10, help="checkpoint every N epochs")
    g.add_argument(
        "--save_ckpt_steps",
        type=int,
        default=0,
        help="also checkpoint every N optimiser steps, mid-epoch (0 = off)",
    )
    g.add_argument(
        "--keep_ckpts",
        type=int,
        default=2,
        help="keep the K newest checkpoints (plus checkpoint-best); older ones are removed",
    )
    g.add_argument("--start_epoch", type=int, default=0, help="first epoch when not resuming")
    g.add_argument("--eval", action="store_true", help="only evaluate --finetune/--resume")
    g.add_argument(
        "--disable_eval_during_finetuning",
        action="store_true",
        help="no validation after each epoch",
    )
    g.add_argument("--dist_eval", action="store_true", help="evaluate sharded across processes")
    g.add_argument("--world_size", type=int, default=1, help="accepted; the launcher decides")
    g.add_argument(
        "--local_rank",
        "--local-rank",
        dest="local_rank",
        type=int,
        default=-1,
        help="set by torch.distributed.launch (torchrun sets LOCAL_RANK)",
    )
    g.add_argument("--dist_on_itp", action="store_true", help="accepted for compatibility")
    g.add_argument("--dist_url", default="env://", help="accepted; env:// is used")
    g.add_argument(
        "--dist_timeout",
        type=float,
        default=300.0,
        help="seconds a rank waits for the others (process-group setup, collectives) before "
        "it stops with one line naming what it waited for",
    )
    g.add_argument(
        "--enable_deepspeed",
        action="store_true",
        help="the reference's DeepSpeed recipe on the built-in engine: on a GPU fp16 autocast "
        "with a dynamic loss scale from 2^7 growing every 128 clean steps (logged)",
    )
    g.add_argument("--zero_stage", type=int, default=0, help="accepted for compatibility")
    g.add_argument(
        "--max_steps_per_epoch",
        type=int,
        default=None,
        help="stop each epoch after N steps (smoke tests)",
    )
    g.add_argument("--no_progress", action="store_true", help="no progress bar")


def build_train_parser(prog: str = "aptune train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a VideoMAE ViT with APT (or another method) for action "
        "recognition. Flags are the reference run_class_apt.py's.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    from aptune.tuning.flags import add_method_flags

    for add in (add_model_args, add_method_flags, add_optim_args, add_data_args, add_run_args):
        add(p)
    return p


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag: value")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def parse_args(argv: list[str] | None, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse flags, then validate and fill in derived values.

    Precedence, lowest first: the reference's defaults, the ``--recipe`` preset (from the
    command line or the file), the ``--config`` file, the flags on the command line.
    """
    pre, _ = parser.parse_known_args(argv)
    values: dict[str, Any] = {}
    if pre.config:
        values = load_yaml(pre.config)
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"--config {pre.config}: unknown keys {', '.join(unknown)}")
    recipe = pre.recipe or values.get("recipe") or "reference"
    try:
        parser.set_defaults(**recipe_values(recipe, f"--config {pre.config}: recipe"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    parser.set_defaults(**values)
    args = parser.parse_args(argv)
    args.recipe = recipe
    return finalize(args)


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    """Derived values and cross-flag checks: errors name the flag."""
    if args.local_rank is not None and args.local_rank >= 0:
        os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.bf16:
        args.precision = "bf16"
    if args.batch_size_val is None:
        args.batch_size_val = args.batch_size
    if args.log_dir is None and args.output_dir:
        args.log_dir = str(Path(args.output_dir) / "tb")
    for flag in ("batch_size", "epochs", "update_freq", "num_frames", "input_size"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    if args.nb_classes < 1:
        raise ConfigError(f"--nb_classes must be >= 1, got {args.nb_classes}")
    if args.num_frames % args.tubelet_size:
        raise ConfigError(
            f"--num_frames {args.num_frames} must be a multiple of --tubelet_size "
            f"{args.tubelet_size}"
        )
    patch = _patch_size(args.model)
    if patch and args.input_size % patch:
        raise ConfigError(
            f"--input_size {args.input_size} must be a multiple of {patch} "
            f"(the patch size of {args.model})"
        )
    if args.opt_betas is not None and len(args.opt_betas) != 2:
        raise ConfigError(f"--opt_betas needs two numbers, got {args.opt_betas}")
    for flag in ("drop", "attn_drop_rate", "drop_path", "fc_drop_rate"):
        if not 0.0 <= getattr(args, flag) < 1.0:
            raise ConfigError(f"--{flag} must be in [0, 1), got {getattr(args, flag)}")
    box = args.cutmix_minmax
    if box is not None and (len(box) != 2 or not 0.0 < box[0] < box[1] <= 1.0):
        raise ConfigError(
            f"--cutmix_minmax needs two fractions 0 < MIN < MAX <= 1 of the frame side, got {box}"
        )
    if args.save_ckpt_freq < 1:
        raise ConfigError(f"--save_ckpt_freq must be >= 1, got {args.save_ckpt_freq}")
    if args.save_ckpt_steps < 0:
        raise ConfigError(f"--save_ckpt_steps must be >= 0, got {args.save_ckpt_steps}")
    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist_timeout must be > 0 seconds, got {args.dist_timeout}")
    if args.keep_ckpts < 1:
        raise ConfigError(f"--keep_ckpts must be >= 1, got {args.keep_ckpts}")
    return args


def _patch_size(model: str) -> int | None:
    """Patch size of a named model (16, or 14 for ViT-g); None for names build_model rejects."""
    from aptune.models.vit import model_spec

    try:
        return int(model_spec(model)["patch_size"])
    except ValueError:
        return None  # build_model names the unknown model with the choices


def to_dict(args: argparse.Namespace) -> dict[str, Any]:
    """Plain, YAML/JSON-safe view of the resolved flags (what ``config.yaml`` holds)."""
    out = {}
    for k, v in sorted(vars(args).items()):
        if k in ("func", "config"):
            continue
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def save_config(args: argparse.Namespace, folder: str | Path) -> Path:
    path = Path(folder) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(yaml.safe_dump(to_dict(args), sort_keys=True))
    os.replace(tmp, path)
    return path


def method_options(args: argparse.Namespace) -> dict[str, Any]:
    """Flags read by tuning methods (``--prompt_*``, ``--vpt_*``, ``--adapter_*``, ``--lora_*``)."""
    prefixes = ("prompt_", "vpt_", "adapter_", "lora_")
    return {k: v for k, v in vars(args).items() if k.startswith(prefixes) and v is not None}
