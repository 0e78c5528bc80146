"""``--decode_cache`` vs decoding every time: training clips per second, side by side.

For the demo's videos (mp4/h264, 16 frames, 64 px) and for 320x240 videos of 96 frames,
times ``VideoClipDataset.__getitem__`` on training clips (decode or cache read + sampling +
augmentation), uncached and with a warm cache, and a floor: copying the clip's frames out
of an in-memory array plus the same augmentation. Also what verifying an entry costs per
clip (every cached open re-computes the entry's CRC-32, ``frame_cache.entry_checksum``),
next to decoding, and what blake2b over the same bytes would cost instead. Run on an
otherwise idle machine:

    python benchmarks/bench_decode_cache.py [--clips 400]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from aptune.data import DataConfig, build_dataset
from aptune.data.frame_cache import entry_checksum
from aptune.data.lists import write_video_list
from aptune.data.synthetic import make_clip, write_video

SETTINGS = {  # name -> (frames per video, (H, W), clip frames, input size, sampling rate)
    "demo 64px x16": (16, (64, 64), 8, 64, 2),
    "320x240 x96": (96, (240, 320), 16, 224, 4),
}


def make_videos(root: Path, frames: int, size: tuple[int, int], n: int) -> list[str]:
    rng = np.random.default_rng(0)
    return [str(write_video(root / f"{k}.mp4", make_clip(k, frames, size, rng))) for k in range(n)]


def ms_per_clip(ds, clips: int) -> float:
    torch.manual_seed(0)
    start = time.perf_counter()
    for i in range(clips):
        ds[i % len(ds)]
    return (time.perf_counter() - start) / clips * 1000


def floor_ms(ds, clips: int) -> float:
    """Frames already in RAM: pick the clip's frames and augment (no decode, no disk)."""
    frames = ds._read(ds.entries[0], None, np.random.default_rng(0))  # one decoded clip
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for _ in range(clips):
        ds.train_transform(np.array(frames), rng)
    return (time.perf_counter() - start) / clips * 1000


def check_ms(cache: Path, repeats: int = 20) -> tuple[float, float]:
    """(CRC-32 as the cache checks it, blake2b over the same bytes): ms per cached open."""
    entries = sorted(cache.rglob("*.npy"))

    def blake(entry: Path) -> bytes:
        raw = np.memmap(entry, dtype=np.uint8, mode="r")
        return hashlib.blake2b(memoryview(raw), digest_size=16).digest()

    out = []
    for fn in (entry_checksum, blake):
        start = time.perf_counter()
        for _ in range(repeats):
            for entry in entries:
                fn(entry)
        out.append((time.perf_counter() - start) / (repeats * len(entries)) * 1000)
    return out[0], out[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=400, help="clips timed per setting")
    args = p.parse_args()
    print(f"{'videos':16s} {'uncached ms':>12s} {'cached ms':>10s} {'floor ms':>9s} "
          f"{'speed-up':>9s} {'cached/floor':>13s} {'crc32 ms':>9s} {'crc/decode':>11s} "
          f"{'blake2b ms':>11s}")  # fmt: skip
    for name, (frames, size, clip, input_size, rate) in SETTINGS.items():
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            n = 40 if frames <= 16 else 8
            videos = make_videos(root, frames, size, n)
            write_video_list(root / "train.csv", [(v, 0) for v in videos])
            cfg = DataConfig(
                data_set="SSV2", data_path=str(root), nb_classes=1, num_frames=clip,
                sampling_rate=rate, input_size=input_size, short_side_size=input_size,
                crop_scale=(1.0, 1.0), reprob=0.0,
            )  # fmt: skip
            plain = build_dataset("train", cfg)
            cached = build_dataset("train", replace(cfg, decode_cache=str(root / "cache")))
            clips = args.clips if frames <= 16 else max(args.clips // 10, 20)
            for i in range(len(cached)):
                cached[i]  # warm: each video decoded into the cache once
            un, ca = ms_per_clip(plain, clips), ms_per_clip(cached, clips)
            fl = floor_ms(plain, clips)
            crc, blake = check_ms(root / "cache")
            print(f"{name:16s} {un:12.2f} {ca:10.2f} {fl:9.2f} {un / ca:8.1f}x {ca / fl:12.2f}x "
                  f"{crc:9.3f} {crc / un:10.1%} {blake:11.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
