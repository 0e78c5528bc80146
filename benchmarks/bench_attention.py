"""APT forward / train-step cost: fused SDPA attention vs the plain reference-style path.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is
its own. Printed side by side in one run: seconds per call, the plain/SDPA ratio, peak
memory above the model's own footprint, and achieved GFLOP/s against this machine's
measured matmul floor (a large fp32 GEMM).

    python benchmarks/bench_attention.py                     # ViT-S and ViT-B, 16x224, batch 1
    python benchmarks/bench_attention.py --models vit_small_patch16_224 --batch 2 --bf16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def matmul_gflops(seconds: float = 2.0, n: int = 2048) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def measure(cfg: dict) -> dict:
    """Runs inside the child process."""
    import torch

    import aptune
    from aptune.commands.profile import count_flops  # counts CPU SDPA kernels too

    torch.manual_seed(0)
    model = aptune.build_model(
        cfg["model"], num_classes=174, transfer_type="prompt", prompt_num_tokens=cfg["tokens"],
        prompt_reparam=True, num_frames=cfg["frames"], input_size=cfg["size"],
        attn_impl=cfg["impl"],
    )  # fmt: skip
    x = torch.randn(cfg["batch"], 3, cfg["frames"], cfg["size"], cfg["size"])
    y = torch.zeros(cfg["batch"], dtype=torch.long)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    dtype = torch.bfloat16 if cfg["bf16"] else None
    autocast = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model(x)

    def train_step() -> None:
        model.train()
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    fn = forward if cfg["mode"] == "forward" else train_step

    # FlopCounterMode's module tracker needs autograd on: count a grad-enabled forward
    # (same flops) for "forward", the real step for "train".
    def counted() -> None:
        if cfg["mode"] == "forward":
            with autocast:
                model(x)
        else:
            train_step()

    flops = count_flops(counted)
    fn()  # warm-up
    times = []
    for _ in range(cfg["repeats"]):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        **cfg,
        "seconds": min(times),
        "gflop": flops / 1e9,
        "peak_mb_above_model": peak - base_rss,
    }


def run_child(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit_small_patch16_224", "vit_base_patch16_224"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--tokens", type=int, default=2, help="APT prompt tokens per layer")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="CPU bf16 autocast")
    p.add_argument("--modes", nargs="+", default=["forward", "train"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(measure(json.loads(a.child))))
        return
    floor = matmul_gflops()
    print(f"matmul floor: {floor:.1f} GFLOP/s (fp32 2048x2048 GEMM, this machine)")
    header = f"{'model':<24}{'mode':<9}{'impl':<7}{'s/call':>9}{'GFLOP':>9}{'GFLOP/s':>9}"
    print(header + f"{'%floor':>8}{'peak MB':>9}{'plain/sdpa':>12}")
    rows = []
    for model in a.models:
        for mode in a.modes:
            res = {}
            for impl in ("plain", "sdpa"):
                cfg = dict(model=model, mode=mode, impl=impl, batch=a.batch, frames=a.frames)
                cfg.update(size=a.size, tokens=a.tokens, repeats=a.repeats, bf16=a.bf16)
                res[impl] = r = run_child(cfg)
                rate = r["gflop"] / r["seconds"]
                ratio = f"{res['plain']['seconds'] / r['seconds']:.2f}x" if impl == "sdpa" else ""
                print(f"{model:<24}{mode:<9}{impl:<7}{r['seconds']:>9.3f}{r['gflop']:>9.1f}"
                      f"{rate:>9.1f}{100 * rate / floor:>7.0f}%{r['peak_mb_above_model']:>9.0f}"
                      f"{ratio:>12}", flush=True)  # fmt: skip
                rows.append(r)
    print(json.dumps({"matmul_floor_gflops": floor, "rows": rows}))


if __name__ == "__main__":
    main()
