"""``aptune`` command line: train, eval, predict, extract, export, report, info, prepare,
profile, pretrain, demo.

``aptune train`` takes exactly the reference's flags (see ``aptune train --help``);
``run_class_apt.py`` at the repository root is the same command under the reference's
name. Errors a user can fix are printed as one line naming the file or flag; set
``APTUNE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("aptune")


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[aptune] %(message)s", stream=sys.stderr)


def cmd_train(argv: list[str]) -> int:
    from aptune.config import build_train_parser, parse_args
    from aptune.engine import train

    args = parse_args(argv, build_train_parser())
    if args.eval:
        return cmd_reference_eval(args)
    train(args)
    return 0


def cmd_reference_eval(args: argparse.Namespace) -> int:
    """``--eval`` of the reference: test the model given by --finetune / --resume."""
    from aptune.engine import evaluate_args

    result = evaluate_args(args)
    if result:
        print(json.dumps(result["test"], indent=2))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from aptune.engine import evaluate_run

    overrides = {
        k: v
        for k, v in {
            "data_path": args.data_path,
            "eval_data_path": args.eval_data_path,
            "test_num_segment": args.test_num_segment,
            "test_num_crop": args.test_num_crop,
            "batch_size_val": args.batch_size,
            "num_workers": args.num_workers,
            "eval_output": args.output,
        }.items()
        if v is not None
    }
    if "data_path" in overrides and "eval_data_path" not in overrides:
        overrides["eval_data_path"] = overrides["data_path"]
    result = evaluate_run(Path(args.run), args.which, overrides)
    if result:
        test = result["test"]
        print(f"top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  "
              f"({test['num_videos']} videos x {test['views_per_video']} views)")  # fmt: skip
        print(f"per-video predictions: {Path(args.output or args.run) / 'eval_predictions.jsonl'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aptune",
        description="Parameter-efficient fine-tuning of VideoMAE video transformers "
        "(Attention Prompt Tuning and the methods it is compared with).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="fine-tune (flags of the reference run_class_apt.py; "
                   "see aptune train --help)", add_help=False)  # fmt: skip
    e = sub.add_parser("eval", help="evaluate a trained run on all test views")
    e.add_argument("run", help="output_dir of an aptune train run")
    e.add_argument("--which", choices=["last", "best"], default="last")
    e.add_argument("--data_path", default=None, help="evaluate on another list folder")
    e.add_argument("--eval_data_path", default=None)
    e.add_argument("--test_num_segment", type=int, default=None)
    e.add_argument("--test_num_crop", type=int, default=None)
    e.add_argument("--batch_size", type=int, default=None)
    e.add_argument("--num_workers", type=int, default=None)
    e.add_argument("--output", default=None, help="folder for eval outputs (default: run)")
    e.set_defaults(func=cmd_eval)
    from aptune.commands.demo import add_demo_parser
    from aptune.commands.export import add_export_parser
    from aptune.commands.extract import add_extract_parser
    from aptune.commands.info import add_info_parser
    from aptune.commands.predict import add_predict_parser
    from aptune.commands.profile import add_profile_parser
    from aptune.commands.report import add_report_parser
    from aptune.data.prepare import add_prepare_parser
    from aptune.pretrain import add_pretrain_parser

    for add in (add_predict_parser, add_extract_parser, add_export_parser, add_report_parser,
                add_info_parser, add_prepare_parser, add_profile_parser, add_pretrain_parser,
                add_demo_parser):  # fmt: skip
        add(sub)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story for a user (no traceback)."""
    from aptune.commands.export import ExportError
    from aptune.config import ConfigError
    from aptune.data import DataError
    from aptune.engine import NonFiniteLossError, ResumeError
    from aptune.models.checkpoint_io import CheckpointError
    from aptune.tuning import TuningConfigError

    return (ConfigError, DataError, CheckpointError, TuningConfigError, ResumeError,
            NonFiniteLossError, ExportError, FileNotFoundError, ValueError)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        if not getattr(args, "func", None):
            build_parser().print_help()
            return 0
        return int(args.func(args) or 0)
    except user_errors() as exc:
        if os.environ.get("APTUNE_DEBUG"):
            raise
        print(f"aptune: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aptune: interrupted", file=sys.stderr)
        return 130


def reference_main(argv: list[str] | None = None) -> int:
    """``run_class_apt.py``: the reference's entry point (train, or test with --eval)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    return main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main())
