"""``aptune report RUN``: its flags, then :func:`aptune.engine.html_report.write_report`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser("report", help="write RUN/report.html: curves, metrics, confusions")
    r.add_argument("run", help="output_dir of an aptune train run")
    r.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    from aptune.engine.html_report import write_report

    path = write_report(Path(args.run))
    print(f"{path}: self-contained HTML (open it in any browser; nothing is fetched)")
    return 0
