"""Data pipeline throughput vs. the APT ViT-S train step, on this machine.

Decoded + augmented training clips per second (16 frames, 224 px, RandAugment
rand-m4-n2-mstd0.2-inc1, random erasing) for avi/mpeg4, mp4/h264 and webm/vp9 videos of
320x240, with PyAV and decord (when installed), DataLoader num_workers 0 and 2; then one APT
ViT-S train step (batch 1, forward + backward + AdamW) if `aptune.build_model` exists.

    python benchmarks/bench_data.py [--clips 24] [--no-model]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from aptune.data import DataConfig, build_dataset, collate_clips, decord_available, open_video
from aptune.data.lists import write_video_list
from aptune.data.sampling import dense_indices
from aptune.data.synthetic import make_clip, write_video

FORMATS = ("avi", "mp4", "webm")


def make_videos(root: Path, n: int = 3, frames: int = 96) -> dict[str, list[str]]:
    """`n` 320x240 25 fps videos per container, built from 32-frame synthetic chunks."""
    rng = np.random.default_rng(0)
    out: dict[str, list[str]] = {f: [] for f in FORMATS}
    for k in range(n):
        clip = np.concatenate([make_clip(k + c, 32, (240, 320), rng) for c in range(frames // 32)])
        for fmt in FORMATS:
            out[fmt].append(str(write_video(root / f"{fmt}_{k}.{fmt}", clip, 25, gop=12)))
    return out


def decode_ms(paths: list[str], backend: str, repeats: int = 6) -> float:
    """Milliseconds to open a video and decode one dense 16x4 clip."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    for r in range(repeats):
        with open_video(paths[r % len(paths)], backend) as reader:
            reader.get_frames(dense_indices(reader.num_frames, 16, 4, rng))
    return (time.perf_counter() - start) / repeats * 1000


def clips_per_second(data_path: str, backend: str, workers: int, clips: int) -> float:
    cfg = DataConfig(data_set="UCF101", data_path=data_path, nb_classes=3, backend=backend,
                     is_aa=True, aa="rand-m4-n2-mstd0.2-inc1")  # fmt: skip
    ds = build_dataset("train", cfg)
    sampler = RandomSampler(ds, replacement=True, num_samples=clips + max(workers, 1))
    loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=workers,
                        collate_fn=collate_clips)  # fmt: skip
    it = iter(loader)
    for _ in range(max(workers, 1)):  # warm-up: worker start, first decode
        next(it)
    start = time.perf_counter()
    n = sum(len(b) for b in it)
    return n / (time.perf_counter() - start)


def model_step_seconds(steps: int = 3, bf16: bool = True) -> float | None:
    """Seconds per APT ViT-S train step at batch 1 (None if the model is not available)."""
    try:
        from aptune import build_model
    except ImportError:
        return None
    model = build_model("vit_small_patch16_224", num_classes=101, transfer_type="prompt",
                        prompt_num_tokens=1, num_frames=16, input_size=224)  # fmt: skip
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x, y = torch.randn(1, 3, 16, 224, 224), torch.tensor([3])
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24, help="clips timed per setting")
    parser.add_argument("--no-model", action="store_true", help="skip the model train step")
    args = parser.parse_args()
    backends = ["pyav"] + (["decord"] if decord_available() else [])
    print(f"torch threads {torch.get_num_threads()}, backends {backends}")
    with tempfile.TemporaryDirectory() as tmp:
        videos = make_videos(Path(tmp))
        rows = []
        for fmt in FORMATS:
            write_video_list(Path(tmp) / fmt / "train.csv", [(p, 0) for p in videos[fmt]])
            for backend in backends:
                ms = decode_ms(videos[fmt], backend)
                rates = [clips_per_second(f"{tmp}/{fmt}", backend, w, args.clips) for w in (0, 2)]
                rows.append((fmt, backend, ms, *rates))
    print(f"\n{'video':14s} {'backend':8s} {'decode 16f ms':>14s} {'clips/s w=0':>12s} "
          f"{'clips/s w=2':>12s}")  # fmt: skip
    names = {"avi": "avi/mpeg4", "mp4": "mp4/h264", "webm": "webm/vp9"}
    for fmt, backend, ms, r0, r2 in rows:
        print(f"{names[fmt]:14s} {backend:8s} {ms:14.1f} {r0:12.1f} {r2:12.1f}")
    step = None if args.no_model else model_step_seconds()
    if step is None:
        print("\nmodel step: skipped (aptune.build_model not available or --no-model)")
        return
    model_rate = 1 / step
    print(
        f"\nAPT ViT-S train step, batch 1, bf16 autocast: {step:.2f} s = {model_rate:.2f} clips/s"
    )
    worst = min(r[4] for r in rows)
    print(f"slowest data setting with 2 workers: {worst:.1f} clips/s = "
          f"{worst / model_rate:.1f}x the model's clips/s")  # fmt: skip


if __name__ == "__main__":
    main()
