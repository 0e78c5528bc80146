"""``aptune prepare`` (and ``python -m aptune.data.prepare``): its flags, then
:func:`aptune.data.prepare.prepare`; the counts and missing videos are printed here."""

from __future__ import annotations

import argparse
import sys

SHOW_MISSING = 5  # missing videos named in the warning; the rest are counted


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``prepare`` on the CLI's sub-command parsers."""
    from aptune.data import prepare as prepare_module

    p = subparsers.add_parser(
        "prepare",
        help="write VideoMAE list files (train/val/test.csv, classes.txt) for a dataset",
        description=prepare_module.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", choices=prepare_module.DATASETS, help="layout of --root")
    p.add_argument("--root", required=True, help="dataset download folder")
    p.add_argument("--split", type=int, choices=(1, 2, 3), default=1, help="UCF101/HMDB51 split")
    p.add_argument("--out", required=True, help="folder for the list files (--data_path)")
    p.add_argument("--video_root", default=None, help="folder of the videos if not under --root")
    p.add_argument(
        "--absolute",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="absolute video paths (default); --no-absolute writes paths relative to the "
        "video folder, to be joined with --data_root at training time",
    )
    p.add_argument("--val_ratio", type=float, default=0.2, help="folder: held-out fraction")
    p.set_defaults(func=run_prepare)


def run_prepare(args: argparse.Namespace) -> int:
    """Prints counts and missing videos; exit 1 when no listed video exists, 2 on a bad root."""
    from aptune.data.errors import DataError
    from aptune.data.prepare import prepare

    try:
        result = prepare(
            args.dataset, args.root, args.out, args.split, args.video_root, args.absolute,
            args.val_ratio,
        )  # fmt: skip
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.dataset}: {len(result.classes)} classes -> {result.out}")
    for name in ("train", "val", "test"):
        print(f"  {name + '.csv':10s} {result.counts[name]:7d} videos")
    if result.counts["unlabeled_test"]:
        print(f"  (test json: {result.counts['unlabeled_test']} unlabelled ids, not listed)")
    if result.missing:
        shown = ", ".join(result.missing[:SHOW_MISSING])
        more = " ..." if len(result.missing) > SHOW_MISSING else ""
        print(
            f"warning: {len(result.missing)} of {result.listed} videos named in the split "
            f"files are missing on disk (check --root / --video_root): {shown}{more}",
            file=sys.stderr,
        )
    if result.listed and len(result.missing) == result.listed:
        print("error: none of the listed videos exist on disk", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m aptune.data.prepare ucf101 --root ... --out ...`` (``prepare`` optional)."""
    parser = argparse.ArgumentParser(prog="aptune")
    add_prepare_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "prepare":
        argv.insert(0, "prepare")
    args = parser.parse_args(argv)
    return args.func(args)
