"""``aptune extract``: features of videos from a run, or from a checkpoint given as flags."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_extract_parser(subparsers) -> None:
    ex = subparsers.add_parser("extract", help="features of videos (head input) as safetensors")
    ex.add_argument("videos", nargs="*", help="video files or frame folders")
    ex.add_argument("--list", default=None, help="file with one video per line")
    ex.add_argument("--run", default=None, help="run output_dir, adapter folder or Hub id")
    ex.add_argument("--which", choices=["last", "best"], default="best")
    ex.add_argument("--model", default=None, help="instead of --run: a model name (vit_base...)")
    ex.add_argument("--finetune", default=None, help="with --model: the checkpoint to load")
    ex.add_argument(
        "--flags",
        default="",
        help='with --model: more train flags, e.g. "--nb_classes 174 --data_set SSV2"',
    )
    ex.add_argument("--out", required=True, help="output .safetensors file")
    ex.add_argument("--tokens", action="store_true", help="also store the last block's tokens")
    ex.add_argument("--batch_size", type=int, default=None, help="views per forward pass")
    ex.add_argument("--chunk", type=int, default=256, help="videos per resumable part")
    ex.add_argument("--num_workers", type=int, default=0, help="decoding processes")
    ex.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast")
    ex.add_argument("--no_progress", action="store_true", help="no progress bar")
    ex.set_defaults(func=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from aptune.cli.train import parse_train_args
    from aptune.commands.extract import extract_features, model_from_config, read_list
    from aptune.data.errors import DataError
    from aptune.engine.trained import default_device, open_run

    videos = list(args.videos) + (read_list(args.list) if args.list else [])
    if not videos:
        raise DataError("no videos: give video files or --list FILE")
    if bool(args.run) == bool(args.model):
        raise DataError("give either --run RUN or --model NAME --finetune CKPT")
    if args.run:
        trained = open_run(args.run, args.which)
        source = f"{Path(args.run).resolve()}:{trained.which}"
    else:
        if not args.finetune:
            raise DataError("--model needs --finetune CKPT (the weights to extract with)")
        # the whole checkpoint is the model unless --flags names a method (a later flag wins)
        argv = ["--model", args.model, "--finetune", args.finetune, "--transfer_type", "end2end"]
        cfg = parse_train_args(argv + shlex.split(args.flags or ""), prog="aptune extract --flags")
        trained = model_from_config(cfg, default_device())
        source = f"{args.model}:{Path(args.finetune).resolve()}:{args.flags}"
    out = Path(args.out)
    n, failed = extract_features(trained, videos, out, args.tokens, args.batch_size, args.chunk,
                                 args.num_workers, args.bf16, not args.no_progress,
                                 source)  # fmt: skip
    print(f"{out}: features of {n} video(s), shape ({n}, {trained.model.embed_dim})")
    if failed:
        print(
            f"aptune: {len(failed)} of {len(videos)} video(s) unreadable, not in {out} "
            "(listed in its metadata 'failed'):",
            file=sys.stderr,
        )
        for path, reason in failed[:20]:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0
