"""Cost of VideoMAE V2's cosine attention against standard attention, side by side.

Cosine attention adds an L2 normalisation of q and k (keys and APT prompt keys) and a
per-head logit scale; the matmuls are unchanged. This times both on the same backbone,
interleaving the variants in every repeat so machine load hits both alike, and prints
medians and the cos/standard ratio for an inference forward and an APT train step.

    OMP_NUM_THREADS=1 python benchmarks/bench_cos_attn.py                 # ViT-S 16x224
    python benchmarks/bench_cos_attn.py --model vit_base --impls sdpa,plain --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import aptune


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--num_frames", type=int, default=16)
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--prompt_num_tokens", type=int, default=2)
    p.add_argument("--impls", default="sdpa", help="comma-separated: sdpa,plain")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.num_frames, args.input_size, args.input_size)
    y = torch.zeros(1, dtype=torch.long)
    models = {}
    for cos in (False, True):
        m = aptune.build_model(
            args.model, num_classes=174, num_frames=args.num_frames, input_size=args.input_size,
            prompt_num_tokens=args.prompt_num_tokens, cos_attn=cos,
        )  # fmt: skip
        models["cos" if cos else "standard"] = m
    times: dict[tuple[str, str, str], list[float]] = {}
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]

    def fwd(m) -> None:
        m.eval()
        with torch.no_grad():
            m(x)

    def step(m) -> None:
        m.train()
        F.cross_entropy(m(x), y).backward()

    for m in models.values():  # warm-up
        fwd(m)
        step(m)
    for _ in range(args.repeats):
        for impl in impls:
            for name, m in models.items():  # interleaved: the same load hits both
                m.set_attn_impl(impl)
                times.setdefault((impl, name, "forward"), []).append(_timed(lambda m=m: fwd(m)))
                times.setdefault((impl, name, "apt step"), []).append(_timed(lambda m=m: step(m)))
    print(
        f"{args.model} {args.num_frames}x{args.input_size}, batch 1, APT {args.prompt_num_tokens} "
        f"tokens, {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats"
    )
    print(f"{'impl':<7}{'phase':<10}{'standard s':>12}{'cos s':>10}{'cos/standard':>14}")
    for impl in impls:
        for phase in ("forward", "apt step"):
            std = statistics.median(times[(impl, "standard", phase)])
            cos = statistics.median(times[(impl, "cos", phase)])
            print(f"{impl:<7}{phase:<10}{std:>12.3f}{cos:>10.3f}{cos / std:>14.3f}")


if __name__ == "__main__":
    main()
