"""APT forward / train-step cost: fused SDPA attention vs the plain reference-style path.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is
its own. Printed side by side in one run: seconds per call, the plain/SDPA ratio, peak
memory above the model's own footprint, and achieved GFLOP/s against this machine's
measured matmul floor (a large fp32 GEMM).

    python benchmarks/bench_attention.py                     # ViT-S and ViT-B, 16x224, batch 1
    python benchmarks/bench_attention.py --models vit_small_patch16_224 --batch 2 --bf16
    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py --kernels   # one block's core
    OMP_NUM_THREADS=1 python benchmarks/bench_attention.py --kernels --chunks 18 19 20 21

``--kernels`` times only the attention core of one ViT-S block (forward + backward to q,
k, v; 1568 queries, 1570 keys), in one process, the variants interleaved, in CPU seconds:
the reference's plain expression (autograd through transposed views), SDPA, and aptune's
plain path (``models.attention_kernels.plain_attention``: every batched matmul reads row-major
operands, transposes made contiguous first, backward written out) and its recomputing
kernel (``models.attention_kernels.recompute_attention``: SDPA's fused forward, a backward that
recomputes the probabilities per head, keys x queries, with row-major GEMMs); also that
kernel as of ``--baseline`` (loaded from git: the queries x keys backward before this
form) and with ``--chunks`` of keys, old and new side by side. On
the AMX Xeon here a bf16 ``bmm`` whose second operand is a transposed view runs at about
a quarter of the row-major rate, which is what makes the plain backward slow.
"""

from __future__ import annotations

import argparse
import json
import os
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


def kernels(rounds: int, baseline: str | None, chunk_powers: list[int]) -> None:
    """One ViT-S block's attention core, forward + backward, four ways (plus the
    recomputing kernel as of ``baseline`` and at other chunk sizes), CPU seconds."""
    import statistics

    import torch
    import torch.nn.functional as F

    from aptune.models import attention_kernels as kernels
    from aptune.models.attention_kernels import plain_attention, recompute_attention

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_train_step import keep_freed_memory  # each kernel as in its own process

    print(keep_freed_memory())

    B, h, N, M, d = 1, 6, 1568, 2, 64
    scale = d**-0.5

    def formula_plain(q, k, v):  # the reference's expression, and aptune's before the kernel
        return ((q * scale) @ k.transpose(-2, -1)).softmax(dim=-1) @ v

    cores = {
        "formula plain (reference)": formula_plain,
        "sdpa": F.scaled_dot_product_attention,
        "aptune plain (row-major)": lambda q, k, v: plain_attention(q, k, v, scale),
        "aptune recompute": lambda q, k, v: recompute_attention(q, k, v, scale),
    }
    if baseline:
        old = kernels_at(baseline)
        cores[f"recompute @{baseline}"] = lambda q, k, v: old.recompute_attention(q, k, v, scale)
    chunks = {f"recompute, chunks 2^{c}": 1 << c for c in chunk_powers}
    cores.update({name: cores["aptune recompute"] for name in chunks})
    default_chunk = kernels._CHUNK_ELEMENTS
    print(f"attention core, ViT-S block (h {h}, {N} queries, {N + M} keys), fwd+bwd, "
          f"{torch.get_num_threads()} thread(s), CPU ms, median of {rounds}")  # fmt: skip
    for dtype in (torch.bfloat16, torch.float32):
        qkv = torch.randn(B, N, 3, h, d).to(dtype).permute(2, 0, 3, 1, 4)  # as vit.py
        q, k, v = (t.detach().requires_grad_() for t in qkv.unbind(0))
        prompt = torch.randn(h, M, d).to(dtype)
        grad = torch.randn(B, h, N, d).to(dtype)
        outs, times = {}, {name: [] for name in cores}
        for r in range(rounds + 1):
            for name, core in cores.items():
                kernels._CHUNK_ELEMENTS = chunks.get(name, default_chunk)
                start = time.process_time()
                kk = torch.cat((k, prompt.expand(B, h, M, d)), dim=2)  # (B, h, N+M, d)
                vv = torch.cat((v, prompt.expand(B, h, M, d)), dim=2)
                out = core(q, kk, vv)
                out.backward(grad)
                if r:
                    times[name].append(time.process_time() - start)
                outs[name] = [t.detach().float() for t in (out, q.grad, k.grad, v.grad)]
                q.grad = k.grad = v.grad = None
        base = statistics.median(times["formula plain (reference)"])
        for name in cores:
            t = statistics.median(times[name])
            err = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                      for a, b in zip(outs[name], outs["formula plain (reference)"]))  # fmt: skip
            print(f"  {str(dtype)[6:]:<9}{name:<31}{1e3 * t:8.1f} ms{base / t:7.2f}x"
                  f"   max rel. diff to the formula {err:.1e}")  # fmt: skip


def run_child(cfg: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def kernels_at(rev: str):
    """The attention kernels' module as of ``rev`` (``layers.py`` before they had their own)."""
    from git_source import module_at

    try:
        return module_at(rev, "src/aptune/models/attention_kernels.py", "aptune.models.old_kernels")
    except subprocess.CalledProcessError:
        return module_at(rev, "src/aptune/models/layers.py", "aptune.models.old_layers")


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
    p.add_argument("--kernels", action="store_true", help="time one block's attention core")
    p.add_argument(
        "--baseline",
        default="d871cdc",
        help="--kernels: also time the recomputing kernel as of this git revision (the "
        "queries x keys backward before the keys x queries one); '' to skip",
    )
    p.add_argument(
        "--chunks",
        type=int,
        nargs="*",
        default=[],
        metavar="POWER",
        help="--kernels: also time the recomputing kernel with key chunks of 2^POWER elements",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.kernels:
        kernels(max(a.repeats, 5), a.baseline, a.chunks)
        return
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
