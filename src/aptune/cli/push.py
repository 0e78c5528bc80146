"""``aptune push RUN --repo ORG/NAME``: its flags, then :func:`aptune.commands.share.push_run`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_push_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("push", help="upload a run's adapter folder to the Hugging Face Hub")
    p.add_argument("run", help="output_dir of a finished aptune train run")
    p.add_argument("--repo", required=True, help="Hub model repository ORG/NAME (created if new)")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to upload to (default: main)")
    p.add_argument("--which", choices=["last", "best"], default="best")
    p.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from aptune.commands.share import push_run

    url = push_run(Path(args.run), args.repo, args.private, args.revision, args.which)
    print(f"{args.repo}: uploaded ({url}); load it with aptune.load_run({args.repo!r})")
    return 0
