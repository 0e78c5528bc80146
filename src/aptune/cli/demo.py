"""``aptune demo``: its flags -> :class:`aptune.commands.demo.DemoOptions`, then the demo."""

from __future__ import annotations

import argparse
from pathlib import Path

from aptune.commands import demo
from aptune.commands.demo import DemoOptions


def add_demo_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="compare linear probing, APT and full fine-tuning on synthetic videos (CPU)",
        description=demo.__doc__.splitlines()[0],
    )
    p.add_argument("--out", default="aptune_demo", help="output folder")
    p.add_argument("--quick", action="store_true", help="smoke run: under a minute")
    p.add_argument("--methods", default=None,
                   help=f"comma list from {', '.join(demo.RECIPES)} (default: "
                   f"{','.join(demo.DEFAULT_METHODS)})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backbone", default=None,
                   help="pre-trained encoder to start from instead of the bundled one: a "
                   "pretrain.safetensors from aptune pretrain; the videos follow its "
                   "input size and frame count")  # fmt: skip
    p.add_argument("--jobs", type=int, default=None,
                   help="methods trained side by side, each on cores/jobs threads (default: "
                   "2 on 2+ cores, which finishes sooner than one at a time)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_demo)


def options_from_namespace(args: argparse.Namespace) -> DemoOptions:
    """The parsed flags as :class:`DemoOptions` (validated there)."""
    return DemoOptions(
        out=Path(args.out),
        quick=args.quick,
        methods=tuple(args.methods.split(",")) if args.methods else (),
        seed=args.seed,
        backbone=Path(args.backbone) if args.backbone else None,
        jobs=args.jobs,
        quiet=args.quiet,
    )


def run_demo(args: argparse.Namespace) -> int:
    return demo.run_demo(options_from_namespace(args))
