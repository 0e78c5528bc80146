"""The tubelet embedding on a CPU: Conv3d vs aptune's patches-times-weights matmul, side by side.

Under bf16 autocast on a CPU, ``PatchEmbed`` cuts the clip into (c, t, y, x) patches and
multiplies them by the flattened kernel instead of calling Conv3d (fp32 keeps the conv).
This times both forms of the same layer on the same clip, interleaved, in this process's
CPU seconds with one torch thread, and prints the largest difference between them.

    OMP_NUM_THREADS=1 python benchmarks/bench_patch_embed.py          # ViT-S/B 16x224
    OMP_NUM_THREADS=1 python benchmarks/bench_patch_embed.py --dim 768 --rounds 9
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from aptune.models.layers import tubelet_matmul
from aptune.models.vit import PatchEmbed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=384, help="embedding width (384 ViT-S, 768 ViT-B)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    a = p.parse_args()
    torch.manual_seed(0)
    layer = PatchEmbed(a.size, 16, 3, a.dim, a.frames, 2)
    x = torch.randn(a.batch, 3, a.frames, a.size, a.size)
    print(f"tubelet embedding {a.frames}x{a.size} -> {layer.num_patches} x {a.dim}, batch "
          f"{a.batch}, {torch.get_num_threads()} thread(s), torch {torch.__version__}")  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        forms = {
            "Conv3d": lambda: layer.proj(x).flatten(2).transpose(1, 2),
            "patches @ weights": lambda dtype=dtype: tubelet_matmul(
                x, layer.proj.weight, layer.proj.bias, layer.grid, dtype
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in forms}
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype != torch.float32):
            outs = {name: f().float() for name, f in forms.items()}  # warm-up, and the check
            for _ in range(a.rounds):
                for name, f in forms.items():
                    start = time.process_time()
                    f()
                    times[name].append(time.process_time() - start)
        conv, gemm = (statistics.median(times[name]) for name in forms)
        diff = (outs["Conv3d"] - outs["patches @ weights"]).abs().max().item()
        print(f"{str(dtype).removeprefix('torch.'):>8}: Conv3d {conv * 1e3:6.1f} ms, "
              f"patches @ weights {gemm * 1e3:6.1f} ms -> {conv / gemm:.2f}x; "
              f"max |difference| {diff:.2g}")  # fmt: skip


if __name__ == "__main__":
    main()
