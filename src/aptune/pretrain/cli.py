"""Flags of ``aptune pretrain``: names and defaults of VideoMAE's ``run_mae_pretraining.py``.

Kept free of torch imports: ``aptune --help`` builds every sub-command's parser.
"""

from __future__ import annotations

import argparse


def _positive(name: str):
    def check(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"--{name} must be >= 1, got {value}")
        return value

    return check


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"--mask_ratio must be in [0, 1), got {value}")
    return value


def _switch(group, name: str, default: bool, help: str) -> None:
    """``--name`` / ``--no_name`` (underscores, like every other flag of the reference)."""
    group.add_argument(f"--{name}", dest=name, action="store_true", default=default, help=help)
    group.add_argument(f"--no_{name}", dest=name, action="store_false")


def add_pretrain_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``aptune pretrain`` on the CLI's sub-parsers."""
    p = subparsers.add_parser(
        "pretrain",
        help="VideoMAE self-supervised pre-training (tube masking, pixel reconstruction)",
        description="Pre-train a VideoMAE encoder on unlabelled videos (a list file or any "
        "folder of videos). Writes OUTPUT_DIR/pretrain.safetensors in VideoMAE's "
        "pre-training key layout: fine-tune it with `aptune train --finetune` like an "
        "official checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", default="vit_base_patch16_224", help="encoder size name")
    m.add_argument("--decoder_dim", type=int, default=None, help="default: encoder dim / 2")
    m.add_argument("--decoder_depth", type=_positive("decoder_depth"), default=4)
    m.add_argument("--decoder_num_heads", type=int, default=None,
                   help="default: decoder_dim // 64 (at least 1)")  # fmt: skip
    m.add_argument("--mask_ratio", type=_ratio, default=0.9, help="fraction of tokens hidden")
    m.add_argument("--mask_type", choices=["tube", "random"], default="tube",
                   help="tube: same spatial mask in every time slice (VideoMAE); random: "
                   "tokens hidden independently")  # fmt: skip
    _switch(m, "norm_pix_loss", True, "targets are per-patch normalised pixels (VideoMAE)")
    m.add_argument("--drop_path", type=float, default=0.0)
    d = p.add_argument_group("data")
    d.add_argument("--data_path", required=True,
                   help="folder with train.csv (labels optional), a list file, or any folder "
                   "of videos (scanned recursively)")  # fmt: skip
    d.add_argument("--data_root", default="", help="prefix of relative paths in the list")
    d.add_argument("--num_frames", type=_positive("num_frames"), default=16)
    d.add_argument("--sampling_rate", type=_positive("sampling_rate"), default=4)
    d.add_argument("--tubelet_size", type=_positive("tubelet_size"), default=2)
    d.add_argument("--input_size", type=_positive("input_size"), default=224)
    d.add_argument(
        "--min_crop_scale",
        type=float,
        default=0.5,
        help="random resized crop keeps this much of the area at least",
    )
    d.add_argument("--flip", action="store_true", help="random horizontal flips (off, as VideoMAE)")
    d.add_argument("--decoder", default="auto", choices=["auto", "pyav", "decord", "frames"],
                   help="video decoding backend")  # fmt: skip
    d.add_argument("--strict_data", action="store_true", help="fail on the first unreadable video")
    d.add_argument("--num_workers", type=int, default=4)
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch_size", type=_positive("batch_size"), default=64, help="per process")
    o.add_argument("--update_freq", type=_positive("update_freq"), default=1)
    o.add_argument("--epochs", type=_positive("epochs"), default=800)
    o.add_argument("--lr", type=float, default=1.5e-4, help="per 256 samples")
    o.add_argument("--min_lr", type=float, default=1e-5, help="per 256 samples")
    o.add_argument("--warmup_lr", type=float, default=1e-6, help="per 256 samples")
    o.add_argument("--warmup_epochs", type=int, default=40)
    o.add_argument("--warmup_steps", type=int, default=-1)
    o.add_argument("--weight_decay", type=float, default=0.05)
    o.add_argument("--opt_betas", type=float, nargs=2, default=[0.9, 0.95])
    o.add_argument("--opt_eps", type=float, default=1e-8)
    o.add_argument("--clip_grad", type=float, default=None)
    o.add_argument("--max_steps_per_epoch", type=int, default=None,
                   help="cut epochs short (smoke tests)")  # fmt: skip
    o.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on recent CPUs)")
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--log_dir", default=None, help="TensorBoard folder")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--local_rank", "--local-rank", type=int, default=-1)
    _switch(r, "auto_resume", True, "continue from the newest complete checkpoint in --output_dir")
    r.add_argument("--save_ckpt_freq", type=_positive("save_ckpt_freq"), default=20)
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    # what EpochLoader reads besides the above (fine-tuning flags with fixed values here)
    p.set_defaults(batch_size_val=1, pin_mem=False, dist_eval=False, func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    from aptune.pretrain.runner import run_pretrain

    return run_pretrain(args)


__all__ = ["add_pretrain_parser"]
