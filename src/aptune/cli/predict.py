"""``aptune predict``: its flags, then :func:`aptune.commands.predict.predict_videos` or,
with ``--timeline``, :func:`aptune.commands.predict.timelines`; the printing is here."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    pr = subparsers.add_parser(
        "predict", help="top-k classes of new videos with a trained run (or over time: --timeline)"
    )
    pr.add_argument("videos", nargs="+", help="video files (.avi, .mp4, .webm, frame folders)")
    pr.add_argument("--run", required=True, help="run output_dir, adapter folder or Hub id")
    pr.add_argument("--which", choices=["last", "best"], default="best")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.add_argument(
        "--timeline",
        action="store_true",
        help="slide the run's clip over each whole video; write "
        "<stem>.timeline.csv/.json/.png and print the segments",
    )
    pr.add_argument(
        "--stride",
        type=float,
        default=None,
        help="--timeline: seconds between window starts (default 1.0)",
    )
    pr.add_argument("--out", default=None, help="--timeline: output folder (default: .)")
    pr.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="clips per forward pass (default: the run's batch_size_val)",
    )
    pr.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    pr.add_argument("--no_progress", action="store_true", help="no progress bar")
    pr.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from aptune.commands.predict import predict_videos
    from aptune.data.errors import DataError

    if args.timeline:
        return run_timelines(args)
    if args.out or args.stride is not None:
        raise DataError("--out and --stride go with --timeline: add --timeline")
    results = predict_videos(
        Path(args.run),
        args.videos,
        args.which,
        args.topk,
        bf16=args.bf16,
        batch_size=args.batch_size,
        progress=not args.no_progress,
    )
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results:
        print(item["path"])
        for rank, (idx, name, prob) in enumerate(item["topk"], 1):
            print(f"  {rank}. {name:<30} {100 * prob:6.2f}%  (class {idx})")
    return 0


def run_timelines(args: argparse.Namespace) -> int:
    """``--timeline``: each video's segments printed as soon as its timeline is written."""
    from aptune.commands.predict import timelines

    stride = 1.0 if args.stride is None else args.stride
    report = []
    for tl in timelines(Path(args.run), args.videos, Path(args.out or "."), args.which, stride,
                        args.topk, args.batch_size, args.bf16, not args.no_progress):  # fmt: skip
        report.append(tl.summary())
        if args.json:
            continue
        print(
            f"{tl.video}: {tl.windows} windows of {tl.clip_frames} frames x rate "
            f"{tl.sampling_rate}, every {stride:g} s -> {tl.files['csv']}"
        )
        for seg in tl.segments:
            print(
                f"  {seg['start_s']:8.2f}s - {seg['end_s']:8.2f}s  {seg['name']:<30} "
                f"{100 * seg['mean_prob']:6.2f}%  ({seg['windows']} windows)"
            )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0
