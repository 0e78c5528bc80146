"""Training clips per CPU-second, one thread: the seed's clip path vs the reference-exact one.

Per container (320x240 avi/mpeg4, 340x256 mp4/h264, 320x240 webm/vp9, 96 frames), one
training item = open + decode one 16x4 dense clip + `--num_sample` augmented clips (224 px,
RandAugment rand-m4-n2-mstd0.2-inc1, random resized crop, flip, reprob 0.25), measured with
`time.process_time` on one thread. Four paths, interleaved, medians of `--repeats`:

- issue:   the pipeline when issue 13 was filed: the seed's clip path (below) on the video
           reader of that time (taken from git, `--old_rev`; it returns wrong frames on
           AVIs with B-frames, which these test videos do not have), the baseline of the
           issue's "1.35x today's training clips per CPU-second";
- seed:    the clip path before issue 17 (exact-stride indices, jittered crop resized by
           PIL bicubic, RandAugment on the 224 px crop), kept here verbatim to measure, on
           today's frame-exact reader;
- literal: the reference's order as it runs it (RandAugment on whole frames, normalise,
           crop, float bilinear) = `TrainTransform(whole_frames=True)`;
- new:     aptune's path: the same pixels, RandAugment only on the crop box (its shear and
           translation warps for the whole clip at once, `clip_warp`), uint8 resize.

    OMP_NUM_THREADS=1 python benchmarks/bench_data.py [--videos 3] [--items 40] [--repeats 5]

The "vs issue" column is the issue's goal; "vs seed" credits the clip path alone (both
read with today's reader).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import old_reader_class  # noqa: E402

from aptune.data import open_video  # noqa: E402
from aptune.data.sampling import dense_indices, dense_train_indices
from aptune.data.synthetic import make_clip, write_video
from aptune.data.transforms import TrainTransform, normalize, sample_crop_box

AA = "rand-m4-n2-mstd0.2-inc1"
CONTAINERS = {"avi/mpeg4": ("avi", (240, 320)), "mp4/h264": ("mp4", (256, 340))}
CONTAINERS["webm/vp9"] = ("webm", (240, 320))


class SeedTrainTransform:
    """The training transform of the seed (before issue 17), kept to measure against."""

    def __init__(self, input_size: int = 224, reprob: float = 0.25):
        from timm.data.auto_augment import rand_augment_transform

        hparams = {"translate_const": int(input_size * 0.45), "img_mean": (124, 116, 104)}
        hparams["interpolation"] = Image.Resampling.BICUBIC
        self.op, self.size, self.reprob = rand_augment_transform(AA, hparams), input_size, reprob

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        box = sample_crop_box(frames.shape[1], frames.shape[2], self.size, rng)
        flip, seed = rng.random() < 0.5, int(rng.integers(2**31))
        size = (self.size, self.size)
        bicubic = Image.Resampling.BICUBIC
        images = [Image.fromarray(f).resize(size, bicubic, box=box) for f in frames]
        if flip:
            images = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]
        py_state, np_state = random.getstate(), np.random.get_state()
        out = []
        for im in images:  # timm's op re-seeded per frame: the same draw for every frame
            random.seed(seed)
            np.random.seed(seed)
            out.append(self.op(im))
        random.setstate(py_state)
        np.random.set_state(np_state)
        clip = normalize(np.stack([np.asarray(im) for im in out]))
        if rng.random() < self.reprob:
            clip = erase_tube(clip, rng)
        return clip


# the seed's erasing (one box for the whole clip), replayed by the seed path below
def erase_tube(
    clip: torch.Tensor, rng: np.random.Generator, mode: str = "pixel", count: int = 1
) -> torch.Tensor:
    """Random erasing (timm's box rule: area 2%-33%, log-ratio 0.3-3.3) with the same box
    and fill in every frame, so the erased region is a tube and frames stay consistent."""
    _, _, height, width = clip.shape  # (3, T, H, W)
    area = height * width
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    for _ in range(count):
        for _attempt in range(10):
            target = area * rng.uniform(0.02, 1 / 3)
            aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
            h = round(math.sqrt(target * aspect))
            w = round(math.sqrt(target / aspect))
            if 0 < w < width and 0 < h < height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                if mode == "pixel":
                    fill = torch.randn((3, 1, h, w), generator=gen)
                elif mode == "rand":
                    fill = torch.randn((3, 1, 1, 1), generator=gen)
                else:  # "const"
                    fill = torch.zeros((3, 1, 1, 1))
                clip[:, :, top : top + h, left : left + w] = fill
                break
    return clip


def make_videos(root: Path, n: int, frames: int = 96) -> dict[str, list[str]]:
    """`n` 25 fps videos per container, built from 32-frame synthetic chunks."""
    rng = np.random.default_rng(0)
    out: dict[str, list[str]] = {}
    for name, (ext, hw) in CONTAINERS.items():
        out[name] = []
        for k in range(n):
            clip = np.concatenate([make_clip(k + c, 32, hw, rng) for c in range(frames // 32)])
            out[name].append(str(write_video(root / f"{ext}_{k}.{ext}", clip, 25, gop=12)))
    return out


def run_items(paths, sampler, transform, items: int, num_sample: int, seed: int, reader=None):
    """CPU seconds (decode, augment) for `items` training items over `paths`."""
    rng = np.random.default_rng(seed)
    open_reader = reader or (lambda path: open_video(path, "pyav"))
    decode = augment = 0.0
    for i in range(items):
        start = time.process_time()
        with open_reader(paths[i % len(paths)]) as reader:
            frames = reader.get_frames(sampler(reader.num_frames, 16, 4, rng))
        mid = time.process_time()
        for _ in range(num_sample):
            transform(frames, rng)
        decode, augment = decode + mid - start, augment + time.process_time() - mid
    return decode, augment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=3, help="videos per container")
    parser.add_argument("--items", type=int, default=40, help="training items per repeat")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats")
    parser.add_argument("--num_sample", type=int, default=2)
    parser.add_argument(
        "--old_rev", default="a3c369e~1", help="git revision of the issue-time video reader"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    seed = SeedTrainTransform()
    paths = {
        "issue": (dense_indices, seed, old_reader_class(args.old_rev)),
        "seed": (dense_indices, seed, None),
        "literal": (dense_train_indices, TrainTransform(224, True, AA, reprob=0.25,
                                                        whole_frames=True), None),
        "new": (dense_train_indices, TrainTransform(224, True, AA, reprob=0.25), None),
    }  # fmt: skip
    clips = args.items * args.num_sample
    print(f"one thread, {args.items} items x {args.num_sample} clips per repeat, "
          f"{args.repeats} interleaved repeats, medians; CPU time (process_time)")  # fmt: skip
    header = f"{'video':10s} {'path':8s} {'decode ms/item':>14s} {'augment ms/clip':>15s} "
    print("\n" + header + f"{'clips/CPU-s':>12s} {'vs issue':>9s} {'vs seed':>8s}")
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp), args.videos)
        for name, files in videos.items():
            times: dict[str, list[tuple[float, float]]] = {p: [] for p in paths}
            for rep in range(args.repeats):
                for path, (sampler, transform, reader) in paths.items():
                    times[path].append(
                        run_items(
                            files, sampler, transform, args.items, args.num_sample, rep, reader
                        )
                    )
            rates = {p: [clips / (d + a) for d, a in t] for p, t in times.items()}
            for path in paths:
                dec = np.median([d for d, _ in times[path]]) / args.items * 1000
                aug = np.median([a for _, a in times[path]]) / clips * 1000
                rate = float(np.median(rates[path]))
                # ratio per repeat (the paths ran side by side), then the median
                vs = {
                    base: np.median([r / s for r, s in zip(rates[path], rates[base])])
                    for base in ("issue", "seed")
                }
                print(f"{name:10s} {path:8s} {dec:14.1f} {aug:15.1f} {rate:12.2f} "
                      f"{vs['issue']:8.2f}x {vs['seed']:7.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
