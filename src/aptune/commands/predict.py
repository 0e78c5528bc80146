"""``aptune predict``: class probabilities of new videos from a trained run folder.

Each video is seen through the run's test views (segments x crops) and the softmax is
averaged, exactly as in evaluation, so a prediction matches what ``aptune eval`` scores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aptune.data import VideoClipDataset, collate_clips
from aptune.data.errors import DataError
from aptune.data.lists import VideoEntry, read_class_names
from aptune.engine.builders import data_config
from aptune.engine.distributed import DistInfo
from aptune.engine.run import load_trained_model


def predict_videos(run: Path, videos: list[str], which: str = "best", topk: int = 5) -> list[dict]:
    missing = [v for v in videos if not Path(v).exists()]
    if missing:
        raise DataError(f"{missing[0]}: no such video file or frame folder")
    info = DistInfo(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    if which == "best" and not (run / "checkpoint-best" / "model.safetensors").is_file():
        which = "last"  # runs without validation have no best checkpoint
    args, model = load_trained_model(run, which, info)
    names = _class_names(run, args.nb_classes)
    entries = [VideoEntry(str(Path(v).resolve()), 0, i + 1) for i, v in enumerate(videos)]
    ds = VideoClipDataset("test", data_config(args), entries, names, source="predict")
    loader = DataLoader(ds, batch_size=args.batch_size_val, collate_fn=collate_clips)
    sums = torch.zeros(len(videos), args.nb_classes)
    counts = torch.zeros(len(videos))
    with torch.no_grad():
        for batch in loader:
            probs = torch.softmax(model(batch.clips.to(info.device)).float(), dim=-1).cpu()
            sums.index_add_(0, batch.video_index, probs)
            counts.index_add_(0, batch.video_index, torch.ones(len(batch)))
    probs = sums / counts[:, None]
    k = min(topk, args.nb_classes)
    out = []
    for path, p in zip(videos, probs):
        top = torch.topk(p, k)
        out.append(
            {
                "path": path,
                "topk": [
                    (int(i), names[int(i)], round(float(v), 6))
                    for v, i in zip(top.values, top.indices)
                ],
            }
        )
    return out


def _class_names(run: Path, n: int) -> list[str]:
    path = run / "classes.txt"
    if path.is_file():
        names = read_class_names(path)
        if names and len(names) == n:
            return names
    return [str(i) for i in range(n)]


def run_predict(args: argparse.Namespace) -> int:
    results = predict_videos(Path(args.run), args.videos, args.which, args.topk)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for item in results:
        print(item["path"])
        for rank, (idx, name, prob) in enumerate(item["topk"], 1):
            print(f"  {rank}. {name:<30} {100 * prob:6.2f}%  (class {idx})")
    return 0


def add_predict_parser(subparsers) -> None:
    pr = subparsers.add_parser("predict", help="top-k classes of new videos with a trained run")
    pr.add_argument("videos", nargs="+", help="video files (.avi, .mp4, .webm, frame folders)")
    pr.add_argument("--run", required=True, help="output_dir of an aptune train run")
    pr.add_argument("--which", choices=["last", "best"], default="best")
    pr.add_argument("--topk", type=int, default=5)
    pr.add_argument("--json", action="store_true", help="print JSON")
    pr.set_defaults(func=run_predict)
