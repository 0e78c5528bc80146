"""``aptune report RUN``: write ``RUN/report.html`` (see ``engine/report_html.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from aptune.engine.report_html import write_report


def run_report(args: argparse.Namespace) -> int:
    path = write_report(Path(args.run))
    print(f"{path}: self-contained HTML (open it in any browser; nothing is fetched)")
    return 0


def add_report_parser(subparsers) -> None:
    r = subparsers.add_parser("report", help="write RUN/report.html: curves, metrics, confusions")
    r.add_argument("run", help="output_dir of an aptune train run")
    r.set_defaults(func=run_report)
