"""``aptune pretrain`` and ``python -m aptune.pretrain.export``: their flags, turned into
:class:`aptune.pretrain.config.PretrainConfig` / :func:`export_encoder` arguments.

Flag names and defaults are VideoMAE's ``run_mae_pretraining.py``'s; the defaults are read
from :class:`PretrainConfig`, and a bad value fails while parsing with the same message
the dataclass gives.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from aptune.config import ConfigError
from aptune.pretrain.config import (
    DECODERS,
    DEFAULTS,
    MASK_TYPES,
    PretrainConfig,
    check_mask_ratio,
    check_positive,
)


def _positive(name: str):
    """argparse type: an int >= 1 (``check_positive``'s rule)."""

    def check(text: str) -> int:
        try:
            return check_positive(name, int(text))
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return check


def _ratio(text: str) -> float:
    """argparse type: a mask ratio in [0, 1) (``check_mask_ratio``'s rule)."""
    try:
        return check_mask_ratio(float(text))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _switch(group: argparse._ArgumentGroup, name: str, help: str) -> None:
    """``--name`` / ``--no_name`` (underscores, like every other flag of the reference)."""
    group.add_argument(f"--{name}", dest=name, action="store_true", default=DEFAULTS[name],
                       help=help)  # fmt: skip
    group.add_argument(f"--no_{name}", dest=name, action="store_false")


def add_pretrain_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``aptune pretrain`` on the CLI's sub-parsers."""
    D = DEFAULTS
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
    m.add_argument("--model", default=D["model"], help="encoder size name")
    m.add_argument("--decoder_dim", type=int, default=D["decoder_dim"],
                   help="default: encoder dim / 2")  # fmt: skip
    m.add_argument("--decoder_depth", type=_positive("decoder_depth"), default=D["decoder_depth"])
    m.add_argument("--decoder_num_heads", type=int, default=D["decoder_num_heads"],
                   help="default: decoder_dim // 64 (at least 1)")  # fmt: skip
    m.add_argument("--mask_ratio", type=_ratio, default=D["mask_ratio"],
                   help="fraction of tokens hidden")  # fmt: skip
    m.add_argument("--mask_type", choices=list(MASK_TYPES), default=D["mask_type"],
                   help="tube: same spatial mask in every time slice (VideoMAE); random: "
                   "tokens hidden independently")  # fmt: skip
    _switch(m, "norm_pix_loss", "targets are per-patch normalised pixels (VideoMAE)")
    m.add_argument("--drop_path", type=float, default=D["drop_path"])
    d = p.add_argument_group("data")
    d.add_argument("--data_path", required=True,
                   help="folder with train.csv (labels optional), a list file, or any folder "
                   "of videos (scanned recursively)")  # fmt: skip
    d.add_argument("--data_root", default=D["data_root"],
                   help="prefix of relative paths in the list")  # fmt: skip
    for name in ("num_frames", "sampling_rate", "tubelet_size", "input_size"):
        d.add_argument(f"--{name}", type=_positive(name), default=D[name])
    d.add_argument(
        "--min_crop_scale",
        type=float,
        default=D["min_crop_scale"],
        help="random resized crop keeps this much of the area at least",
    )
    d.add_argument("--flip", action="store_true", help="random horizontal flips (off, as VideoMAE)")
    d.add_argument("--decoder", default=D["decoder"], choices=list(DECODERS),
                   help="video decoding backend")  # fmt: skip
    d.add_argument("--strict_data", action="store_true", help="fail on the first unreadable video")
    d.add_argument("--num_workers", type=int, default=D["num_workers"])
    o = p.add_argument_group("optimisation")
    o.add_argument("--batch_size", type=_positive("batch_size"), default=D["batch_size"],
                   help="per process")  # fmt: skip
    o.add_argument("--update_freq", type=_positive("update_freq"), default=D["update_freq"])
    o.add_argument("--epochs", type=_positive("epochs"), default=D["epochs"])
    for name in ("lr", "min_lr", "warmup_lr"):
        o.add_argument(f"--{name}", type=float, default=D[name], help="per 256 samples")
    o.add_argument("--warmup_epochs", type=int, default=D["warmup_epochs"])
    o.add_argument("--warmup_steps", type=int, default=D["warmup_steps"])
    o.add_argument("--weight_decay", type=float, default=D["weight_decay"])
    o.add_argument("--opt_betas", type=float, nargs=2, default=list(D["opt_betas"]))
    o.add_argument("--opt_eps", type=float, default=D["opt_eps"])
    o.add_argument("--clip_grad", type=float, default=D["clip_grad"])
    o.add_argument("--max_steps_per_epoch", type=int, default=D["max_steps_per_epoch"],
                   help="cut epochs short (smoke tests)")  # fmt: skip
    o.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on recent CPUs)")
    r = p.add_argument_group("run")
    r.add_argument("--output_dir", required=True)
    r.add_argument("--log_dir", default=D["log_dir"], help="TensorBoard folder")
    r.add_argument("--seed", type=int, default=D["seed"])
    r.add_argument("--device", default=D["device"])
    r.add_argument("--local_rank", "--local-rank", type=int, default=D["local_rank"])
    _switch(r, "auto_resume", "continue from the newest complete checkpoint in --output_dir")
    r.add_argument("--save_ckpt_freq", type=_positive("save_ckpt_freq"),
                   default=D["save_ckpt_freq"])  # fmt: skip
    r.add_argument("--no_progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_pretrain)
    return p


def config_from_namespace(args: argparse.Namespace) -> PretrainConfig:
    """The parsed flags as a validated :class:`PretrainConfig` (every field is a flag)."""
    names = [f.name for f in dataclasses.fields(PretrainConfig)]
    return PretrainConfig(**{name: getattr(args, name) for name in names})


def run_pretrain(args: argparse.Namespace) -> int:
    from aptune.pretrain.runner import run_pretrain as run

    return run(config_from_namespace(args))


def export_main(argv: list[str] | None = None) -> int:
    """``python -m aptune.pretrain.export RUN OUT.safetensors [--card OUT.md ...]``."""
    from aptune.pretrain import export

    p = argparse.ArgumentParser(description=export.__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="output_dir of aptune pretrain")
    p.add_argument("out", type=Path, help="encoder .safetensors to write")
    p.add_argument("--card", type=Path, default=None, help="model card .md to write")
    p.add_argument("--data", default="{}", help="JSON describing the pre-training videos")
    p.add_argument("--command", default="", help="command that rebuilds it (for the card)")
    p.add_argument("--build_time_s", type=float, default=None)
    p.add_argument("--machine", default="")
    args = p.parse_args(argv)
    extra = {"build_time_s": args.build_time_s, "machine": args.machine}
    info = export.export_backbone(args.run, args.out, json.loads(args.data), extra, args.card,
                                  args.command)  # fmt: skip
    print(json.dumps({k: info[k] for k in ("num_params", "bytes")}), f"-> {args.out}")
    return 0
