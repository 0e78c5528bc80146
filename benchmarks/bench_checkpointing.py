"""Gradient checkpointing: activation memory and train-step time with and without it.

One model and one batch (APT ViT-B, 16x224, batch 2 by default); checkpointing is switched
with ``model.set_grad_checkpointing`` between the two configurations, so they share every
weight. Memory is counted exactly, per tensor storage (``TensorPeak`` of ``aptune
profile``), which is why both can be measured in one process whatever the allocator
keeps: *kept* is what a training forward keeps for backward, *peak* the most alive at once
over forward and backward (recomputation and gradients included). Time: a full train
step (forward, cross-entropy, backward, AdamW step); the configurations alternate within
each round, and the slowdown is the median of the per-round ratios.

    python benchmarks/bench_checkpointing.py                 # ViT-B APT 16x224, batch 2
    python benchmarks/bench_checkpointing.py --model vit_small --frames 8 --size 112  # quick
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import aptune
from aptune.commands.profile_memory import step_memory

CONFIGS = (("without", False), ("with --use_checkpoint", True))


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_base_patch16_224")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--method", default="prompt", help="--transfer_type (default: APT)")
    p.add_argument("--tokens", type=int, default=2, help="--prompt_num_tokens")
    p.add_argument("--attn_impl", default="sdpa", choices=("sdpa", "plain", "recompute"))
    p.add_argument("--rounds", type=int, default=2, help="timed steps per configuration")
    p.add_argument("--bf16", action="store_true", help="CPU bf16 autocast (default fp32)")
    return p.parse_args()


def build(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = aptune.build_model(
        args.model, num_classes=174, transfer_type=args.method, num_frames=args.frames,
        input_size=args.size, prompt_num_tokens=args.tokens, attn_impl=args.attn_impl,
    )  # fmt: skip
    x = torch.randn(args.batch, 3, args.frames, args.size, args.size)
    y = torch.randint(0, 174, (args.batch,))
    return model, x, y


def time_steps(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: Any, rounds: int
) -> dict[bool, list[float]]:
    """Seconds per train step for each configuration, alternating within every round."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times: dict[bool, list[float]] = {ckpt: [] for _, ckpt in CONFIGS}
    for r in range(rounds):
        order = CONFIGS if r % 2 == 0 else CONFIGS[::-1]  # neither always runs first
        for _, ckpt in order:
            model.set_grad_checkpointing(ckpt)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            times[ckpt].append(time.perf_counter() - t0)
    return times


def main() -> None:
    args = parse_args()
    model, x, y = build(args)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    )
    memory = {}
    for _, ckpt in CONFIGS:  # also the warm-up of each configuration
        model.set_grad_checkpointing(ckpt)
        memory[ckpt] = step_memory(model, x, y, autocast)
    times = time_steps(model, x, y, autocast, args.rounds)
    ratios = [b / a for a, b in zip(times[False], times[True])]
    dtype = "bf16 autocast" if args.bf16 else "fp32"
    machine = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu_name()}"
    print(f"{args.model} {args.method} ({args.tokens} tokens), {args.frames}x{args.size}, "
          f"batch {args.batch}, {dtype}, attn {args.attn_impl}; {machine}")  # fmt: skip
    print(f"{'configuration':<24}{'kept MB':>10}{'peak MB':>10}{'s/step (median)':>18}")
    for name, ckpt in CONFIGS:
        m, t = memory[ckpt], statistics.median(times[ckpt])
        print(f"{name:<24}{m['kept_mb']:>10.0f}{m['peak_mb']:>10.0f}{t:>18.2f}")
    kept = memory[True]["kept_mb"] / memory[False]["kept_mb"]
    peak = memory[True]["peak_mb"] / memory[False]["peak_mb"]
    rounds = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"with / without: kept {kept:.2f}x, peak {peak:.2f}x, step time "
          f"{statistics.median(ratios):.2f}x (per round {rounds})")  # fmt: skip


if __name__ == "__main__":
    main()
