"""Timelines: memory against video length, and windows per second batched vs one at a time.

    OMP_NUM_THREADS=1 python benchmarks/bench_timeline.py [--seconds 10] [--repeats 3]

1. Memory: the same content written as a short video and as one 8x as long; the timeline's
   frame buffer (``WindowStream.max_buffered``) and the peak of Python/numpy allocations
   while streaming (tracemalloc) are printed for both, with their ratio (streaming: ~1x).
2. Speed: ``window_probs`` on a vit_nano model (16 frames, 112 px, 3 test crops), batch 1
   window vs 16 clips per forward pass, repeats interleaved, medians and their ratio.

The machine may be shared: interleaved repeats and medians, figures are indicative.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from aptune.cli.train import parse_train_args
from aptune.commands.timeline import WindowStream, plan_windows, window_probs
from aptune.data import open_video
from aptune.data.synthetic import make_clip, write_video
from aptune.engine.builders import build_run_model
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import Precision
from aptune.engine.trained import TrainedRun

FPS, SIZE = 25, (128, 160)


def write_long(path: Path, seconds: float, seed: int = 0) -> Path:
    """Motion segments of 2 s each, `seconds` long in total."""
    rng = np.random.default_rng(seed)
    clips = [make_clip(k % 10, 2 * FPS, SIZE, rng) for k in range(int(seconds / 2))]
    return write_video(path, np.concatenate(clips), FPS)


def stream_peak(video: Path, frames: int, rate: int, stride: float) -> tuple[int, float, int]:
    """-> (frames buffered at most, tracemalloc peak MB, windows)."""
    with open_video(video, "pyav") as reader:
        wins = plan_windows(reader.num_frames, reader.fps, frames, rate, stride)
        tracemalloc.start()
        stream = WindowStream(reader, wins)
        for _ in stream:
            pass
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return stream.max_buffered, peak, len(wins)


def tiny_run() -> TrainedRun:
    argv = ["--model", "vit_nano", "--nb_classes", "10", "--num_frames", "16", "--input_size",
            "112", "--short_side_size", "128", "--test_num_crop", "3",
            "--transfer_type", "end2end"]  # fmt: skip
    cfg = parse_train_args(argv)
    dev = torch.device("cpu")
    model = build_run_model(cfg, DistInfo(device=dev)).eval()
    return TrainedRun(cfg, model, [str(i) for i in range(10)], "last", dev)


def windows_per_s(trained: TrainedRun, video: Path, batch: int, stride: float) -> float:
    c = trained.config
    with open_video(video, "pyav") as reader:
        wins = plan_windows(reader.num_frames, reader.fps, c.model.num_frames,
                            c.data.sampling_rate, stride)  # fmt: skip
        start = time.perf_counter()
        n = sum(1 for _ in window_probs(trained, WindowStream(reader, wins), batch,
                                         Precision("fp32", "cpu"), progress=False))  # fmt: skip
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=10.0, help="length of the short video")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        short = write_long(Path(tmp) / "short.mp4", args.seconds)
        long = write_long(Path(tmp) / "long.mp4", 8 * args.seconds)
        print(f"1. memory (16 frames x rate 4, stride 0.5 s, {SIZE[1]}x{SIZE[0]} px)")
        got = {}
        for name, video in (("short", short), ("long", long)):
            got[name] = stream_peak(video, 16, 4, 0.5)
            buffered, peak, wins = got[name]
            print(f"   {name:5} {wins:4d} windows: {buffered:3d} frames buffered at most, "
                  f"peak allocations {peak:6.1f} MB")  # fmt: skip
        ratio = got["long"][1] / got["short"][1]
        print(f"   8x longer video -> peak x{ratio:.2f}, buffer "
              f"{got['long'][0]} vs {got['short'][0]} frames")  # fmt: skip
        trained = tiny_run()
        batches = {"1 window (3 clips)": 3, "16 clips": 16}
        times: dict[str, list[float]] = {k: [] for k in batches}
        windows_per_s(trained, short, 16, 0.5)  # warm-up
        for _ in range(args.repeats):
            for label, b in batches.items():  # interleaved
                times[label].append(windows_per_s(trained, short, b, 0.25))
        print(f"2. speed (vit_nano, 16x112 px, 3 crops, {args.repeats} interleaved repeats, "
              "median windows/s)")  # fmt: skip
        med = {k: statistics.median(v) for k, v in times.items()}
        for label, value in med.items():
            print(f"   batch {label:18} {value:7.1f} windows/s")
        first, second = med.values()
        print(f"   batched / one at a time: x{second / first:.2f}")


if __name__ == "__main__":
    main()
