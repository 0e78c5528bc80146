"""``aptune info RUN``: its flags, then :func:`aptune.commands.info.print_info`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_info_parser(subparsers: argparse._SubParsersAction) -> None:
    i = subparsers.add_parser("info", help="checkpoint status, config, parameters, metrics")
    i.add_argument("run")
    i.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from aptune.commands.info import print_info

    print_info(Path(args.run))
    return 0
