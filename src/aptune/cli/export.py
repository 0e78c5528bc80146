"""``aptune export RUN``: its flags, then :func:`aptune.commands.export.export_run`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    from aptune.commands.export import FORMATS

    ex = subparsers.add_parser("export", help="a trained run as ONNX or TorchScript")
    ex.add_argument("run", help="output_dir of an aptune train run")
    ex.add_argument("--format", choices=FORMATS, default="onnx")
    ex.add_argument("--out", required=True, help="output file (model.onnx, model.pt)")
    ex.add_argument("--which", choices=["last", "best"], default="best")
    ex.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from aptune.commands.export import TOLERANCE, export_run

    out = Path(args.out)
    err = export_run(Path(args.run), args.format, out, args.which)
    print(
        f"{out}: {args.format}, checked against PyTorch on a random batch: max relative "
        f"error {err:.2e} (tolerance {TOLERANCE:.0e})"
    )
    print(f"{out}.json: input shape, sampling, mean/std and class names")
    return 0
