"""``aptune`` command line: train, eval, predict, extract, export, push, report, info,
prepare, profile, pretrain, demo. argparse lives in this package only; what it parses becomes
typed options before anything below runs.

``aptune train`` takes exactly the reference's flags (``cli.train``, see ``aptune train
--help``); ``run_class_apt.py`` at the repository root is the same command under the
reference's name. Errors a user can fix are printed as one line naming the file or flag; set
``APTUNE_DEBUG=1`` for the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("aptune")


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="[aptune] %(message)s", stream=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="aptune",
        description="Parameter-efficient fine-tuning of VideoMAE video transformers "
        "(Attention Prompt Tuning and the methods it is compared with).",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("train", help="fine-tune (flags of the reference run_class_apt.py; "
                   "see aptune train --help)", add_help=False)  # fmt: skip
    from aptune.cli.evaluate import add_eval_parser

    add_eval_parser(sub)
    from aptune.cli.demo import add_demo_parser
    from aptune.cli.export import add_export_parser
    from aptune.cli.extract import add_extract_parser
    from aptune.cli.info import add_info_parser
    from aptune.cli.predict import add_predict_parser
    from aptune.cli.prepare import add_prepare_parser
    from aptune.cli.pretrain import add_pretrain_parser
    from aptune.cli.profile import add_profile_parser
    from aptune.cli.push import add_push_parser
    from aptune.cli.report import add_report_parser

    for add in (add_predict_parser, add_extract_parser, add_export_parser, add_report_parser,
                add_info_parser, add_prepare_parser, add_profile_parser, add_pretrain_parser,
                add_demo_parser, add_push_parser):  # fmt: skip
        add(sub)
    return p


def user_errors() -> tuple[type[BaseException], ...]:
    """aptune's own errors about what a user gave it: their message is the whole story
    (one line, no traceback). Anything else is a bug and keeps its traceback."""
    from aptune.commands.export import ExportError
    from aptune.config import ConfigError
    from aptune.data import DataError
    from aptune.engine import NonFiniteLossError, ResumeError
    from aptune.engine.distributed import DistTimeoutError
    from aptune.engine.integrity import IntegrityError
    from aptune.models.checkpoint_io import CheckpointError
    from aptune.sharing.errors import SharingError
    from aptune.tuning import TuningConfigError

    return (ConfigError, DataError, CheckpointError, TuningConfigError, ResumeError,
            NonFiniteLossError, ExportError, DistTimeoutError, IntegrityError,
            SharingError)  # fmt: skip


def main(argv: list[str] | None = None, train_prog: str = "aptune train") -> int:
    """The ``aptune`` command; ``train_prog`` names ``train`` in its help and errors."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    try:
        if argv and argv[0] == "train":
            from aptune.cli.train import cmd_train

            return cmd_train(argv[1:], train_prog)
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
    return main(["train", *argv], train_prog="run_class_apt.py")


if __name__ == "__main__":
    sys.exit(main())
