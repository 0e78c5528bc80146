"""``aptune predict``: class probabilities of new videos from a trained run folder.

Each video is seen through the run's test views (segments x crops) and the softmax is
averaged, exactly as in evaluation, so a prediction matches what ``aptune eval`` scores.
With ``--timeline`` the run's clip slides over the whole video instead (``timeline.py``)
and each video gets a CSV, a JSON and a plot of its classes over time.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aptune.data import VideoClipDataset, collate_clips, open_video
from aptune.data.errors import DataError
from aptune.data.lists import VideoEntry
from aptune.engine.loop import Precision
from aptune.engine.metrics import ViewMeans
from aptune.engine.trained import TrainedRun, open_run

from .timeline import (
    WindowStream,
    plan_windows,
    segments,
    timeline_rows,
    window_probs,
    write_timeline,
)


def check_videos(videos: list[str]) -> None:
    missing = [v for v in videos if not Path(v).exists()]
    if missing:
        raise DataError(f"{missing[0]}: no such video file or frame folder")


def precision_for(trained: TrainedRun, bf16: bool) -> Precision:
    return Precision("bf16" if bf16 else "fp32", trained.device.type)


def view_probs(
    trained: TrainedRun,
    videos: list[str],
    batch_size: int | None = None,
    precision: Precision | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(N, C) mean softmax over the run's test views of each video (eval's rule)."""
    c = trained.config
    entries = [VideoEntry(str(Path(v).resolve()), 0, i + 1) for i, v in enumerate(videos)]
    ds = VideoClipDataset("test", trained.data, entries, trained.class_names, source="predict")
    batch = batch_size or c.optim.batch_size_val
    loader = DataLoader(ds, batch_size=batch, collate_fn=collate_clips)
    precision = precision or Precision("fp32", trained.device.type)
    means = ViewMeans(len(videos), c.data.nb_classes)
    with torch.no_grad():
        for batch in tqdm(loader, desc="predict", leave=False, disable=None if progress else True):
            with precision.autocast():
                logits = trained.model(batch.clips.to(trained.device))
            means.add(logits, batch.video_index)
    return means.means()


def predict_videos(
    run: Path,
    videos: list[str],
    which: str = "best",
    topk: int = 5,
    overrides: dict | None = None,
    bf16: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Top-k of each video: ``{"path", "topk": [(class, name, prob), ...]}``."""
    check_videos(videos)
    trained = open_run(run, which, overrides=overrides)
    probs = view_probs(trained, videos, batch_size, precision_for(trained, bf16), progress)
    names, out = trained.class_names, []
    for path, p in zip(videos, probs):
        top = torch.topk(p, min(topk, len(names)))
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


def predict_timeline(
    trained: TrainedRun,
    video: str,
    stride_s: float = 1.0,
    topk: int = 5,
    batch_size: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> tuple[list[dict], object, dict]:
    """-> (rows: one per window with start_s, end_s, topk; probabilities (W, C); metadata)."""
    c = trained.config
    with open_video(video, trained.data.backend) as reader:
        windows = plan_windows(
            reader.num_frames, reader.fps, c.model.num_frames, c.data.sampling_rate, stride_s
        )
        stream = WindowStream(reader, windows)
        wp = window_probs(
            trained,
            stream,
            batch_size or c.optim.batch_size_val,
            precision_for(trained, bf16),
            progress,
            Path(video).name,
        )
        rows, probs = timeline_rows(wp, trained.class_names, topk)
        meta = {
            "fps": reader.fps,
            "num_video_frames": reader.num_frames,
            "stride_s": stride_s,
            "clip_frames": c.model.num_frames,
            "sampling_rate": c.data.sampling_rate,
            "crops": c.data.test_num_crop,
            "classes": trained.class_names,
            "max_buffered_frames": stream.max_buffered,
        }
    return rows, probs, meta


def run_timelines(args: argparse.Namespace) -> int:
    check_videos(args.videos)
    stems = [Path(v.rstrip("/")).stem for v in args.videos]
    twice = next((s for s in stems if stems.count(s) > 1), None)
    if twice is not None:
        raise DataError(
            f"two videos are named {twice!r}: their timelines would overwrite each "
            "other in --out; run them separately with different --out"
        )
    trained = open_run(args.run, args.which)
    out = Path(args.out or ".")
    stride = 1.0 if args.stride is None else args.stride
    report = []
    for video in args.videos:
        rows, probs, meta = predict_timeline(
            trained, video, stride, args.topk, args.batch_size, args.bf16, not args.no_progress
        )
        paths = write_timeline(video, rows, probs, trained.class_names, out, meta)
        report.append(
            {
                "video": video,
                "files": {k: str(p) for k, p in paths.items()},
                "segments": segments(rows),
            }
        )
        if args.json:
            continue
        print(
            f"{video}: {len(rows)} windows of {meta['clip_frames']} frames x rate "
            f"{meta['sampling_rate']}, every {stride:g} s -> {paths['csv']}"
        )
        for seg in report[-1]["segments"]:
            print(
                f"  {seg['start_s']:8.2f}s - {seg['end_s']:8.2f}s  {seg['name']:<30} "
                f"{100 * seg['mean_prob']:6.2f}%  ({seg['windows']} windows)"
            )
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def run_predict(args: argparse.Namespace) -> int:
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


def add_predict_parser(subparsers) -> None:
    pr = subparsers.add_parser(
        "predict", help="top-k classes of new videos with a trained run (or over time: --timeline)"
    )
    pr.add_argument("videos", nargs="+", help="video files (.avi, .mp4, .webm, frame folders)")
    pr.add_argument("--run", required=True, help="output_dir of an aptune train run")
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
