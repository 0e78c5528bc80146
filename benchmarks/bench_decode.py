"""Training-clip decoding: the frame-exact PyAV reader against the one before it, side by side.

A clip is 16 frames at rate 4 from a random start (open the file, read, close), as a
training dataset does per video. Videos: 320x240 mpeg4 AVI with B-frames (plain and DivX
packed, like UCF101) and 340x256 h264 mp4, 6 s at 25 fps. The old reader is taken from
git (`--old_rev`, default the commit before the frame-exact fix) and run interleaved with
the new one; medians of per-clip times are printed with their ratio. The old reader
returns wrong frames on the AVIs: the count is printed too.

    OMP_NUM_THREADS=1 python benchmarks/bench_decode.py [--clips 40] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from video_fixtures import pack_b_frames, sequential_frames, write_coded  # noqa: E402

from aptune.data.decode import PyAVReader  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from git_source import module_at  # noqa: E402


def old_reader_class(rev: str):
    return module_at(rev, "src/aptune/data/decode.py", "aptune.data.old_decode").PyAVReader


def smooth_frames(n: int, height: int, width: int) -> np.ndarray:
    """A slow pan over smooth texture with a moving block: B-frames are chosen as in real video."""
    rng = np.random.default_rng(0)
    blocks = (height // 16 + 2, width // 16 + n // 32 + 2, 3)
    small = rng.integers(40, 200, blocks).astype(np.float32)
    base = np.kron(small, np.ones((16, 16, 1)))  # room for a pan of n / 2 pixels
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frame = base[4 : 4 + height, i // 2 : i // 2 + width].copy()
        x = (3 * i) % (width - 24)
        frame[height // 2 : height // 2 + 24, x : x + 24] = (230, 50, 50)
        frames[i] = frame
    return frames


def make_videos(root: Path) -> dict[str, Path]:
    avi = smooth_frames(150, 240, 320)
    mp4 = smooth_frames(150, 256, 340)
    plain = write_coded(root / "plain.avi", avi, "mpeg4", {"qscale": "4"}, b_frames=2, gop=250)
    return {  # mp4: x264 "fast" keeps its default 3 B-frames with b-pyramid
        "avi mpeg4 B": plain,
        "avi mpeg4 packed": pack_b_frames(plain, root / "packed.avi"),
        "mp4 h264": write_coded(root / "v.mp4", mp4, "libx264", {"preset": "fast"}, gop=250),
    }


def clip_time(make, path: Path, indices: list[int]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    with make(str(path)) as reader:
        frames = reader.get_frames(indices)
    return time.perf_counter() - start, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--old_rev", default="a3c369e~1")
    args = parser.parse_args()
    readers = {
        "old": old_reader_class(args.old_rev),
        "exact": lambda path: PyAVReader(path, skip_nonref=False),
        "exact+skip": PyAVReader,  # non-reference frames no index asks for are not decoded
    }
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp))
        rng = np.random.default_rng(0)
        print("ms per clip (open + 16 frames at rate 4 + close), medians; ratios old/new")
        print(f"{'video':17s} {'old':>6s} {'exact':>6s} {'+skip':>6s} {'old/exact':>9s}"
              f" {'old/+skip':>9s} {'old: wrong frames':>18s}")  # fmt: skip
        for name, path in videos.items():
            reference = sequential_frames(path)
            starts = rng.integers(0, len(reference) - 61, args.clips).tolist()
            clips = [[s + 4 * k for k in range(16)] for s in starts]
            times: dict[str, list[float]] = {label: [] for label in readers}
            wrong = 0
            labels = list(readers)
            for repeat in range(args.repeats):  # interleaved: the machine is shared and noisy
                for c, clip in enumerate(clips):
                    shift = (repeat + c) % len(labels)  # rotate who goes first
                    for label in labels[shift:] + labels[:shift]:
                        make = readers[label]
                        seconds, frames = clip_time(make, path, clip)
                        times[label].append(seconds)
                        pairs = zip(frames, clip)
                        bad = sum(not np.array_equal(f, reference[i]) for f, i in pairs)
                        if label == "old":
                            wrong += bad
                        else:
                            assert bad == 0, f"{label} reader not exact on {name} {clip}"
            old, exact, skip = (statistics.median(times[k]) * 1e3 for k in readers)
            total = args.repeats * args.clips * 16
            print(f"{name:17s} {old:6.1f} {exact:6.1f} {skip:6.1f} {old / exact:9.2f}"
                  f" {old / skip:9.2f} {wrong:>11d}/{total}")  # fmt: skip


if __name__ == "__main__":
    main()
