"""``aptune profile`` (and ``python -m aptune.commands.profile``): its flags ->
:class:`aptune.commands.profile.ProfileOptions`, then the profile; the tables are printed here."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from aptune.cli.train import add_method_flags

MODULE_COMMAND = ["python", "-m", "aptune.commands.profile"]


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from aptune.commands.profile import DEFAULT_METHODS, DEFAULT_SWEEP

    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument(
        "--methods",
        default=DEFAULT_METHODS,
        help="comma-separated transfer types; combine with '+', e.g. prompt+lora",
    )
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--nb_classes", type=int, default=174)
    p.add_argument("--repeats", type=int, default=3, help="timed iterations after a warm-up")
    p.add_argument("--bf16", action="store_true", help="CPU bf16 autocast (weights stay fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--use_checkpoint",
        action="store_true",
        help="also measure each method with gradient checkpointing (a second row each)",
    )
    p.add_argument(
        "--token_sweep",
        default=DEFAULT_SWEEP,
        help="prompt counts for the APT vs VPT-deep FLOP sweep ('' to skip)",
    )
    p.add_argument(
        "--meta",
        action="store_true",
        help="parameters and counted FLOPs only, on meta tensors: no memory, no timing "
        "(sizes e.g. vit_giant_patch14_224 on any machine)",
    )
    p.add_argument("--out", default="profile", help="directory for profile.{md,json,png}")
    add_method_flags(p, reference=False)
    p.set_defaults(func=run_profile)
    return p


def add_profile_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``aptune profile`` on the main CLI's subparsers."""
    from aptune.commands import profile

    p = subparsers.add_parser(
        "profile",
        help="parameters, FLOPs, latency, memory and checkpoint size per tuning method",
        description=profile.__doc__.split("\n\n")[0],
    )
    return _configure(p)


def run_profile(args: argparse.Namespace, command: str | None = None) -> int:
    """``command``: the command line as typed, for the report (default: this process's)."""
    from aptune.commands.profile import ProfileOptions, profile
    from aptune.tuning import TuningConfigError
    from aptune.tuning.options import method_flags

    try:
        sweep = [int(t) for t in args.token_sweep.split(",") if t.strip()]
    except ValueError:
        print(f"error: --token_sweep {args.token_sweep!r}: expected integers like 2,50,400")
        return 2
    options = {k: getattr(args, k) for k in method_flags() if getattr(args, k) is not None}
    opts = ProfileOptions(
        model=args.model, methods=[m.strip() for m in args.methods.split(",") if m.strip()],
        num_frames=args.num_frames, input_size=args.input_size, batch_size=args.batch_size,
        nb_classes=args.nb_classes, method_options=options, repeats=args.repeats,
        bf16=args.bf16, threads=args.threads, use_checkpoint=args.use_checkpoint,
        token_sweep=sweep, meta=args.meta, out=Path(args.out),
        command=command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    )  # fmt: skip
    try:
        paths = profile(opts)
    except TuningConfigError as exc:
        print(f"error: {exc}")
        return 2
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m aptune.commands.profile ...``: ``aptune profile`` under its module name."""
    parser = _configure(argparse.ArgumentParser(prog=shlex.join(MODULE_COMMAND)))
    argv = sys.argv[1:] if argv is None else argv
    return run_profile(parser.parse_args(argv), shlex.join([*MODULE_COMMAND, *argv]))
