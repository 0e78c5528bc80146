"""RandAugment's one-axis bicubic warps on a training clip: PIL frame by frame vs
`aptune.data.clip_warp.warp_clip` (the same bytes, checked here), side by side in one process.

A 16-frame clip of real-looking content (a synthetic 340x256 video decoded through PyAV),
warped into a box like the one the random resized crop keeps, with matrices as timm builds
them at rand-m4 magnitudes; CPU time on one thread, medians of interleaved rounds.

    OMP_NUM_THREADS=1 python benchmarks/bench_clip_warp.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aptune.data import open_video
from aptune.data.clip_warp import warp_clip
from aptune.data.synthetic import make_clip, write_video

FILL = (128, 128, 128)
BICUBIC = Image.Resampling.BICUBIC


def pil_warp(frames: np.ndarray, size: tuple[int, int], matrix: tuple) -> np.ndarray:
    return np.stack(
        [
            np.asarray(
                Image.fromarray(f).transform(
                    size, Image.Transform.AFFINE, matrix, BICUBIC, fillcolor=FILL
                )
            )
            for f in frames
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(0, 64, (256, 340), np.random.default_rng(0))
        path = write_video(Path(tmp) / "v.mp4", clip, 25, gop=12)
        with open_video(str(path), "pyav") as reader:
            frames = reader.get_frames(list(range(0, 64, 4)))
    height, width = frames.shape[1:3]
    size = (248, 196)  # a crop box of about half the frame, plus the warps' margin
    ops = {  # timm at rand-m4 (magnitude 4 of 10): shear 0.12, translate 0.18 of the side
        "ShearX": (1, 0.12, -9.0, 0, 1, 30.0),
        "ShearY": (1, 0, 40.0, -0.12, 1, 21.37),
        "TranslateXRel": (1, 0, 0.18 * width + 40.0, 0, 1, 30.0),
        "TranslateYRel": (1, 0, 40.0, 0, 1, -0.18 * height + 30.0),
    }
    print(f"16 frames {width}x{height} -> {size[0]}x{size[1]}, bicubic, one thread, CPU ms, "
          f"medians of {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'op':15s} {'PIL':>8s} {'clip_warp':>10s} {'speed-up':>9s}  same bytes")
    for name, matrix in ops.items():
        same = np.array_equal(
            pil_warp(frames, size, matrix), warp_clip(frames, size, matrix, BICUBIC, FILL)
        )
        times: dict[str, list[float]] = {"pil": [], "ours": []}
        for _ in range(args.rounds):
            for key, fn in (
                ("pil", lambda m=matrix: pil_warp(frames, size, m)),
                ("ours", lambda m=matrix: warp_clip(frames, size, m, BICUBIC, FILL)),
            ):
                start = time.process_time()
                fn()
                times[key].append((time.process_time() - start) * 1000)
        pil, ours = statistics.median(times["pil"]), statistics.median(times["ours"])
        print(f"{name:15s} {pil:8.1f} {ours:10.1f} {pil / ours:8.2f}x  {same}")


if __name__ == "__main__":
    main()
