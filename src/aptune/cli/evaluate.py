"""``aptune eval RUN``: every test view of a trained run, optionally on another list."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate a trained run on all test views")
    e.add_argument("run", help="a run's output_dir, an adapter folder or Hub id")
    e.add_argument("--which", choices=["last", "best"], default="last")
    e.add_argument("--data_path", default=None, help="evaluate on another list folder")
    e.add_argument("--eval_data_path", default=None)
    e.add_argument("--test_num_segment", type=int, default=None)
    e.add_argument("--test_num_crop", type=int, default=None)
    e.add_argument("--segment_merge", choices=["auto", "softmax", "tokens"], default=None,
                   help="how a video's test segments combine (default: the run's)")
    e.add_argument("--batch_size", type=int, default=None)
    e.add_argument("--num_workers", type=int, default=None)
    e.add_argument("--output", default=None, help="folder for eval outputs (default: run)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from aptune.engine import evaluate_run

    given = {
        "data_path": args.data_path,
        "eval_data_path": args.eval_data_path,
        "test_num_segment": args.test_num_segment,
        "test_num_crop": args.test_num_crop,
        "segment_merge": args.segment_merge,
        "batch_size_val": args.batch_size,
        "num_workers": args.num_workers,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if "data_path" in overrides and "eval_data_path" not in overrides:
        overrides["eval_data_path"] = overrides["data_path"]
    output = Path(args.output) if args.output else None
    result = evaluate_run(Path(args.run), args.which, overrides, output)
    if result:
        test = result["test"]
        print(f"top-1 {test['top1']:.2f}%  top-5 {test['top5']:.2f}%  "
              f"({test['num_videos']} videos x {test['views_per_video']} views)")  # fmt: skip
        print(f"per-video predictions: {Path(args.output or args.run) / 'eval_predictions.jsonl'}")
    return 0
