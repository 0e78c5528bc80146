"""APT against linear probing on the demo's data and recipe, over a small grid of variants.

    python benchmarks/apt_vs_linear.py [--backbone FILE] [--out DIR] [--epochs N]
                                       [--variants lin-0.96,apt16-1.6,...]

Each variant is one ``aptune train`` child process started exactly as ``aptune demo``
starts it (same synthetic videos, flags and seed; only the lr or the prompt count
changes), so the numbers are comparable with the demo table. It prints top-1 on the 500
held-out videos and the gap of every APT variant to the best linear probe. Use it to
check a claim about APT vs linear probing on a backbone (``--backbone`` takes a
``pretrain.safetensors`` from ``aptune pretrain``; default: the bundled one).
About 35 s per variant on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from aptune import demo

# key -> (label, method, lr per 256 clips, extra flags); the demo's own lrs are 0.96 and 1.6
VARIANTS = {
    "lin-0.32": ("linear, lr 0.32", "linear", 0.32, ()),
    "lin-0.96": ("linear, lr 0.96 (demo)", "linear", 0.96, ()),
    "lin-3.2": ("linear, lr 3.2", "linear", 3.2, ()),
    "apt16-0.53": ("APT 16 tokens, lr 0.53", "prompt", 0.53, ()),
    "apt16-1.6": ("APT 16 tokens, lr 1.6 (demo)", "prompt", 1.6, ()),
    "apt16-4.8": ("APT 16 tokens, lr 4.8", "prompt", 4.8, ()),
    "apt64-1.6": ("APT 64 tokens, lr 1.6", "prompt", 1.6, ("--prompt_num_tokens", "64")),
}


def run_variant(method: str, lr: float, extra: tuple[str, ...], data: Path, run: Path,
                backbone: Path | None, scale: demo.Scale) -> dict:  # fmt: skip
    flags = demo.train_flags(method, data, run, scale, 0, backbone)
    flags[flags.index("--lr") + 1] = str(lr)
    flags += list(extra)  # argparse keeps the last value of a repeated flag
    bar = tqdm(total=scale.epochs, disable=True)
    code, seconds, peak = demo.run_method(flags, run, scale.epochs, bar)
    if code != 0:
        raise SystemExit(f"{method} lr {lr} failed (exit {code}); see {run / 'demo_train.log'}")
    return demo.collect(method, run, seconds, peak)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", type=Path, default=None, help="default: the bundled one")
    p.add_argument("--out", type=Path, default=Path("apt_vs_linear"))
    p.add_argument("--epochs", type=int, default=demo.FULL.epochs, help="demo: %(default)s")
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
    results = []
    for key in keys:
        label, method, lr, extra = VARIANTS[key]
        run = args.out.resolve() / "runs" / f"{key}-{args.epochs}ep"
        row = run_variant(method, lr, extra, data, run, backbone, scale)
        results.append((label, method, row["top1"], row["train_time_s"]))
        print(f"{label:30s} top-1 {row['top1']:5.1f}%  ({row['train_time_s']:.0f} s)", flush=True)
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
