"""``aptune export RUN``: its flags, then :func:`aptune.commands.export.export_run`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    from aptune.commands.export import FORMATS

    ex = subparsers.add_parser(
        "export", help="a trained run as ONNX, TorchScript, an adapter folder or a PEFT LoRA"
    )
    ex.add_argument("run", help="output_dir of an aptune train run")
    ex.add_argument(
        "--format", choices=FORMATS, default="onnx",
        help="onnx | torchscript: one file; adapter: the trained tensors + adapter_config.json "
        "+ model card (every method); peft: a LoRA run as a folder peft loads on transformers",
    )  # fmt: skip
    ex.add_argument("--out", required=True, help="output file (model.onnx, model.pt) or folder")
    ex.add_argument("--which", choices=["last", "best"], default="best")
    ex.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from aptune.commands.export import TOLERANCE, export_run

    out = Path(args.out)
    err = export_run(Path(args.run), args.format, out, args.which)
    if args.format == "adapter":
        print(f"{out}: adapter folder (adapter_model.safetensors, adapter_config.json, README.md, "
              f"classes.txt); loaded back: max logit difference {err:.1e}")  # fmt: skip
        return 0
    if args.format == "peft":
        check = (f"peft on transformers gives the run's logits to {err:.1e}" if err is not None
                 else "not checked (pip install peft transformers to check)")  # fmt: skip
        print(f"{out}: PEFT LoRA folder ({check}); load it with peft.PeftModel (README.md)")
        return 0
    print(
        f"{out}: {args.format}, checked against PyTorch on a random batch: max relative "
        f"error {err:.2e} (tolerance {TOLERANCE:.0e})"
    )
    print(f"{out}.json: input shape, sampling, mean/std and class names")
    return 0
