"""APT against linear probing on the demo's data and recipe, over a small grid of variants.

    python benchmarks/apt_vs_linear.py [--backbone FILE] [--out DIR] [--epochs N]
                                       [--variants lin-0.24,apt64-2.4,...] [--jobs N]

Each variant is one ``aptune train`` child process started exactly as ``aptune demo``
starts it (same synthetic videos, flags and seed; only the lr or the prompt count
changes), so the numbers are comparable with the demo table. It prints top-1 on the 1,000
held-out videos and the gap of every APT variant to the best linear probe. Use it to
check a claim about APT vs linear probing on a backbone (``--backbone`` takes a
``pretrain.safetensors`` from ``aptune pretrain``; default: the bundled one).
Variants run two at a time on one thread each, as the demo runs its methods.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from aptune.commands import demo

# key -> (label, method, lr per 256 clips, extra flags). The demo: linear 0.24; APT 2.4 with
# --head_lr_scale 0.1, so its head trains at the linear probe's 0.24 (kept in every APT row
# but one)
_H = "--head_lr_scale"
VARIANTS = {
    "lin-0.12": ("linear, lr 0.12", "linear", 0.12, ()),
    "lin-0.24": ("linear, lr 0.24 (demo)", "linear", 0.24, ()),
    "lin-0.48": ("linear, lr 0.48", "linear", 0.48, ()),
    "apt64-1.6": ("APT 64 tokens, lr 1.6", "prompt", 1.6, (_H, "0.15")),
    "apt64-2.4": ("APT 64 tokens, lr 2.4 (demo)", "prompt", 2.4, ()),
    "apt64-3.2": ("APT 64 tokens, lr 3.2", "prompt", 3.2, (_H, "0.075")),
    "apt64-2.4-head2.4": ("APT 64 tokens, lr 2.4, head also 2.4", "prompt", 2.4, (_H, "1")),
    "apt16-2.4": ("APT 16 tokens, lr 2.4", "prompt", 2.4, ("--prompt_num_tokens", "16")),
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", type=Path, default=None, help="default: the bundled one")
    p.add_argument("--out", type=Path, default=Path("apt_vs_linear"))
    p.add_argument("--epochs", type=int, default=demo.FULL.epochs, help="demo: %(default)s")
    p.add_argument("--jobs", type=int, default=None, help="side by side (default as the demo)")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma list of %(default)s")  # fmt: skip
    args = p.parse_args()
    keys = args.variants.split(",")
    unknown = [k for k in keys if k not in VARIANTS]
    if unknown:
        p.error(f"--variants: unknown {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    scale = dataclasses.replace(demo.FULL, epochs=args.epochs)
    from aptune.pretrain import demo_backbone_config

    backbone = args.backbone.resolve() if args.backbone else None
    cfg = demo_backbone_config(backbone)
    size = int(cfg["build_model_kwargs"]["input_size"])
    frames = int(cfg["data"].get("frames_per_video", 16))
    data = args.out.resolve() / "data"
    demo.make_data(data, demo.FULL, frames, size, seed=0)
    jobs = []
    for key in keys:
        label, method, lr, extra = VARIANTS[key]
        run = args.out.resolve() / "runs" / f"{key}-{args.epochs}ep"
        flags = demo.train_flags(method, data, run, scale, 0, backbone)
        flags[flags.index("--lr") + 1] = str(lr)
        jobs.append(demo.Job(key, flags + list(extra), run))  # argparse: the last value wins
    bar = tqdm(total=len(jobs) * args.epochs, desc="variants", unit="epoch")
    parallel = args.jobs or demo.default_parallel()  # as aptune demo runs them
    results = []
    for job in demo.run_jobs(jobs, args.epochs, bar, parallel):
        label, method, _, _ = VARIANTS[job.key]
        if job.code != 0:
            raise SystemExit(f"{job.key} failed (exit {job.code}); see {job.out}/demo_train.log")
        row = demo.collect(method, job.out, job.seconds, job.peak_bytes)
        results.append((label, method, row["top1"], row["train_time_s"]))
    bar.close()
    best_linear = max((top1 for _, m, top1, _ in results if m == "linear"), default=None)
    print(f"\nbackbone: {backbone or 'bundled'}; {args.epochs} epochs; best linear probe "
          f"{'not run' if best_linear is None else f'{best_linear:.1f}%'}")  # fmt: skip
    print("| variant | top-1 (%) | vs best linear probe (points) |\n|---|---:|---:|")
    for label, method, top1, _ in results:
        gap = "" if method == "linear" or best_linear is None else f"{top1 - best_linear:+.1f}"
        print(f"| {label} | {top1:.1f} | {gap} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
