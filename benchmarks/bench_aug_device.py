"""Worker CPU-seconds per training clip: augmenting in the workers vs on the training device.

`--aug_device cpu` (workers decode and augment) against `--aug_device cuda` (workers decode
and draw each clip's plan; the main process augments the batch on the GPU). Per container
(320x240 avi/mpeg4, 340x256 mp4/h264, 320x240 webm/vp9, 96 frames) one item = open + decode
one 16x4 clip + `--num_sample` clips (224 px, RandAugment rand-m7-n4-mstd0.5-inc1, random
resized crop, flip, reprob 0.25), one thread, `time.process_time`, the two worker paths
interleaved, medians of `--repeats`.

It also prints what the batched device augmentation costs per clip in the main process on
this machine's CPU (and on CUDA when there is one): that work leaves the workers.

    OMP_NUM_THREADS=1 python benchmarks/bench_aug_device.py [--videos 3] [--items 24]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_data import make_videos  # the same videos (this folder is on sys.path)

from aptune.data import DeviceAugment, open_video
from aptune.data.device_augment import RawClipItem, collate_raw
from aptune.data.sampling import dense_train_indices
from aptune.data.transforms import TrainTransform

AA = "rand-m7-n4-mstd0.5-inc1"  # the reference's default --aa


def worker_items(paths, tf: TrainTransform, items: int, num_sample: int, seed: int, defer: bool):
    """CPU seconds of `items` worker items; with `defer`, also the raw items made."""
    rng = np.random.default_rng(seed)
    raw = []
    start = time.process_time()
    for i in range(items):
        with open_video(paths[i % len(paths)], "pyav") as reader:
            frames = reader.get_frames(dense_train_indices(reader.num_frames, 16, 4, rng))
        t, h, w, _ = frames.shape
        if defer:
            plans = [tf.plan(t, h, w, rng, ops=True) for _ in range(num_sample)]
            raw.append(RawClipItem(torch.from_numpy(frames), plans, 0, i, (3, t, 224, 224)))
        else:
            for _ in range(num_sample):
                tf(frames, rng)
    return time.process_time() - start, raw


def device_cost(raw: list[RawClipItem], batch: int, device: str) -> float:
    """Seconds per clip of DeviceAugment on `device` (batches of `batch` items)."""
    aug = DeviceAugment(224)
    batches = [collate_raw(raw[i : i + batch]) for i in range(0, len(raw), batch)]
    aug(batches[0].to(device))  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    clock = time.perf_counter if device == "cuda" else time.process_time
    start = clock()
    for b in batches:
        aug(b.to(device))
    if device == "cuda":
        torch.cuda.synchronize()
    return (clock() - start) / sum(len(b) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3, help="videos per container")
    parser.add_argument("--items", type=int, default=24, help="training items per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--num_sample", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="items per device batch")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tf = TrainTransform(224, True, AA, reprob=0.25)
    clips = args.items * args.num_sample
    print(
        f"one thread, {args.items} items x {args.num_sample} clips per repeat, "
        f"{args.repeats} interleaved repeats, medians; worker CPU time (process_time)"
    )
    head = f"{'video':10s} {'worker ms/clip: cpu':>20s} {'cuda (decode+plan)':>19s} {'ratio':>7s}"
    head += f" {'device aug ms/clip on CPU':>26s}"
    if torch.cuda.is_available():
        head += f" {'on CUDA':>8s}"
    print("\n" + head)
    with tempfile.TemporaryDirectory() as tmp:
        for name, files in make_videos(Path(tmp), args.videos).items():
            full, deferred, raw = [], [], []
            for rep in range(args.repeats):
                full.append(worker_items(files, tf, args.items, args.num_sample, rep, False)[0])
                secs, raw = worker_items(files, tf, args.items, args.num_sample, rep, True)
                deferred.append(secs)
            ratio = float(np.median([f / d for f, d in zip(full, deferred, strict=True)]))
            line = f"{name:10s} {np.median(full) / clips * 1e3:20.1f} "
            line += f"{np.median(deferred) / clips * 1e3:19.1f} {ratio:6.2f}x"
            line += f" {device_cost(raw, args.batch, 'cpu') * 1e3:26.1f}"
            if torch.cuda.is_available():
                line += f" {device_cost(raw, args.batch, 'cuda') * 1e3:8.2f}"
            print(line)


if __name__ == "__main__":
    main()
