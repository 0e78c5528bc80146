"""Activation memory of an APT train step per model size, with and without --use_checkpoint.

For each size: one clip (16x224 by default), APT with 2 prompt tokens in every block, bf16
autocast with the frozen weights stored in bf16 (what a GPU run with ``--precision auto``
does on a card with bf16), SDPA. The bytes are counted per tensor storage (``TensorPeak``
of ``aptune profile``): *kept* is what the training forward keeps for backward, *peak* the
most alive at once over forward and backward. Both grow linearly with the batch. Weights
are not included: add the model's parameter bytes (listed) for what a card must hold.

    python benchmarks/bench_memory_sizes.py                      # S, B, L, H, g
    python benchmarks/bench_memory_sizes.py --models vit_small_patch16_224 --frames 8
"""

from __future__ import annotations

import argparse

import torch

import aptune
from aptune.commands.profile_memory import step_memory
from aptune.engine.speed import cast_frozen_weights

SIZES = ("vit_small_patch16_224", "vit_base_patch16_224", "vit_large_patch16_224",
         "vit_huge_patch16_224", "vit_giant_patch14_224")  # fmt: skip


def measure(name: str, frames: int, size: int, ckpt: bool) -> dict[str, float]:
    torch.manual_seed(0)
    model = aptune.build_model(name, num_classes=174, num_frames=frames, input_size=size,
                               transfer_type="prompt", prompt_num_tokens=2,
                               use_checkpoint=ckpt)  # fmt: skip
    cast_frozen_weights(model, torch.bfloat16)
    x = torch.randn(1, 3, frames, size, size)
    y = torch.zeros(1, dtype=torch.long)
    out = step_memory(model, x, y, torch.autocast("cpu", dtype=torch.bfloat16))
    out["weights_mb"] = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(SIZES))
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    print(f"APT, 2 tokens, {a.frames}x{a.size}, batch 1, bf16 autocast, frozen weights bf16; "
          f"MB per clip")  # fmt: skip
    print("| model | weights | kept | peak | kept, --use_checkpoint | peak, --use_checkpoint |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in a.models:
        plain = measure(name, a.frames, a.size, False)
        ckpt = measure(name, a.frames, a.size, True)
        print(f"| {name} | {plain['weights_mb']:.0f} | {plain['kept_mb']:.0f} | "
              f"{plain['peak_mb']:.0f} | {ckpt['kept_mb']:.0f} "
              f"({ckpt['kept_mb'] / plain['kept_mb']:.2f}x) | {ckpt['peak_mb']:.0f} "
              f"({ckpt['peak_mb'] / plain['peak_mb']:.2f}x) |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
