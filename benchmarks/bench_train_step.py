"""APT train step of aptune vs a reference-style VideoMAE model, side by side in one process.

The reference-style model below is written the way VideoMAE's fine-tuning ViT and the APT
code are (its own code is not in this repository): plain attention that keeps the
(B, h, N, N+M) scores, fp32 weights under the same autocast, every block through
autograd, prompts concatenated to the keys and values. aptune runs in every combination
that engine/speed.py chooses between: SDPA, plain or recomputing attention, frozen weights stored in
bf16 or not, torch.compile or not, and what ``--attn_impl auto`` picks.

Every configuration shares one set of weights, runs once per round in a shuffled order
(a noisy neighbour hits all of them alike), and reports the median over rounds. Also
printed: activation memory a training forward keeps for backward (bytes of the saved
tensors that are not parameters), and the bf16 GEMM floor: the step's counted FLOPs at
this machine's measured bf16 GEMM rate on the model's own GEMM shape.

    OMP_NUM_THREADS=2 python benchmarks/bench_train_step.py              # ViT-S 16x224, batch 1
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --allocator system   # glibc defaults
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --alone reference-style  # its faults
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --alone sdpa --fp32 --profile  # ops
    OMP_NUM_THREADS=1 python benchmarks/bench_train_step.py --alone plain --forward  # eval
    python benchmarks/bench_train_step.py --model vit_nano --frames 4 --size 32 --no-compile
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import logging
import platform
import random
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import aptune
from aptune.config import RunConfig
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import Precision
from aptune.engine.speed import cast_frozen_weights, prepare_model_for_speed


# -- the reference-style model ----------------------------------------------------------------
class RefAttention(nn.Module):
    """VideoMAE's attention with APT's key/value prompts: plain matmul + softmax."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, qkv_bias)
        qkv = qkv.reshape(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, h, N, d)
        q, k, v = qkv[0], qkv[1], qkv[2]
        shape = (B, self.heads) + pk.shape  # (B, h, M, d)
        k = torch.cat((k, pk.to(k.dtype).expand(shape)), dim=2)  # (B, h, N+M, d)
        v = torch.cat((v, pv.to(v.dtype).expand(shape)), dim=2)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, h, N, N+M)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)  # (B, N, C)
        return self.proj(x)


class RefBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = RefAttention(dim, heads)
        self.mlp = nn.Sequential()
        self.mlp.fc1, self.mlp.act, self.mlp.fc2 = (
            nn.Linear(dim, 4 * dim),
            nn.GELU(),
            nn.Linear(4 * dim, dim),
        )

    def forward(self, x: torch.Tensor, pk: torch.Tensor, pv: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), pk, pv)
        return x + self.mlp(self.norm2(x))


class RefViT(nn.Module):
    """Same parameter names as aptune's model, so one state dict loads into both."""

    def __init__(self, ours: nn.Module) -> None:
        super().__init__()
        dim, heads = ours.embed_dim, ours.num_heads
        self.patch_embed = copy.deepcopy(ours.patch_embed)
        self.register_buffer("pos_embed", ours.pos_embed.clone(), persistent=False)
        self.blocks = nn.ModuleList(RefBlock(dim, heads) for _ in range(ours.depth))
        self.fc_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, ours.num_classes)
        self.prompt_k = nn.Parameter(ours.kv_prompts.prompt_embeddings_k.detach().clone())
        self.prompt_v = nn.Parameter(ours.kv_prompts.prompt_embeddings_v.detach().clone())
        self.load_state_dict(ours.state_dict(), strict=False)
        for name, p in self.named_parameters():
            p.requires_grad_(name.startswith(("prompt_", "fc_norm", "head")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + self.pos_embed.type_as(x).to(x.device).clone().detach()
        for i, blk in enumerate(self.blocks):
            x = blk(x, self.prompt_k[i], self.prompt_v[i])
        return self.head(self.fc_norm(x.mean(1)))


#: the clock every figure is read from: this process's CPU time when torch runs one thread
#: (other processes on a shared machine then barely move it), else wall time; set in main()
CLOCK: Callable[[], float] = time.perf_counter


# -- measuring ---------------------------------------------------------------------------------
def keep_freed_memory() -> str:
    """glibc: keep freed blocks for reuse (mmap threshold 32 MiB, trim threshold 1 GiB).

    Why: in its own process each model's step settles into glibc's adaptive thresholds
    and faults no pages after a few steps (measured for aptune's kernels and for the
    reference-style model alike). Interleaving eight configurations in one process keeps
    resetting that, and the configuration with the largest temporaries (the
    reference-style step) then paid 65-165K page faults (0.2-0.7 s) per step. Fixed
    thresholds give every configuration its own-process steady state.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "allocator: not glibc, left alone"
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (glibc's largest)
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    return "allocator: glibc keeps freed blocks (mmap threshold 32 MiB, trim 1 GiB)"


def train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, precision: Precision
) -> Callable:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, foreach=False)

    def step() -> None:
        with precision.autocast():
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def forward_step(model: nn.Module, x: torch.Tensor, precision: Precision) -> Callable:
    """An evaluation forward: no autograd graph."""

    def step() -> None:
        with torch.no_grad(), precision.autocast():
            model(x)

    return step


def saved_bytes(model: nn.Module, x: torch.Tensor, precision: Precision) -> int:
    """Bytes autograd keeps for backward (unique storages, parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), precision.autocast():
        model(x)
    return sum(kept.values())


def gemm_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """Best-of-5 rate of an (m x k) @ (k x n) GEMM: the floor a step could reach."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    best = 0.0
    for _ in range(5):
        a @ b
        count, start = 0, CLOCK()
        while CLOCK() - start < seconds / 5:
            a @ b
            count += 1
        best = max(best, 2 * m * k * n * count / (CLOCK() - start) / 1e9)
    return best


def step_flops(step: Callable) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def median_times(steps: dict[str, Callable], rounds: int) -> tuple[dict, dict]:
    """One warm-up each, then ``rounds`` rounds, each in its own shuffled order (a fixed
    rotation would give every configuration the same predecessor, and with it the same
    allocator and cache state); every step time per round, and the median of its minor
    page faults (memory handed back to the OS and touched again: system time inside the
    step)."""
    names = list(steps)
    for name in names:
        steps[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    faults: dict[str, list[int]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[:]
        random.Random(r).shuffle(order)
        for name in order:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = CLOCK()
            steps[name]()
            times[name].append(CLOCK() - start)
            faults[name].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        print(f"  round {r + 1}/{rounds} done", flush=True)
    return times, {n: statistics.median(v) for n, v in faults.items()}


# -- the run -----------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vit_small_patch16_224")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=2, help="APT prompt tokens per layer")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument(
        "--clock",
        choices=["auto", "cpu", "wall"],
        default="auto",
        help="auto: process CPU time with one torch thread, else wall time",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    p.add_argument("--no-fp32", action="store_true", help="skip the fp32 rows")
    p.add_argument(
        "--allocator",
        choices=["keep", "system"],
        default="keep",
        help="keep: glibc keeps freed blocks (each configuration then runs as in its own "
        "process); system: glibc's adaptive defaults, which interleaved configurations keep "
        "resetting (the reference-style step then faults ~65-165K pages per step)",
    )
    p.add_argument(
        "--alone",
        metavar="CONFIG",
        default=None,
        help="build and run only this configuration, in bf16 unless --fp32 (e.g. reference-style, "
        "'recompute + bf16 frozen') for 6 steps and print each step's page faults and CPU "
        "seconds: what it pays in its own process under --allocator",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="with --alone: after its 6 steps, profile 2 more and print torch.profiler's "
        "table of the ops that took the most CPU time (where a step's time goes)",
    )
    p.add_argument("--fp32", action="store_true", help="with --alone: fp32 instead of bf16")
    p.add_argument(
        "--forward",
        action="store_true",
        help="with --alone: time no-grad forwards (evaluation) instead of train steps",
    )
    a = p.parse_args()
    print(keep_freed_memory() if a.allocator == "keep" else "allocator: glibc's defaults")
    global CLOCK
    cpu = a.clock == "cpu" or (a.clock == "auto" and torch.get_num_threads() == 1)
    CLOCK = time.process_time if cpu else time.perf_counter
    logging.basicConfig(level=logging.INFO, format="  %(message)s")
    torch.manual_seed(0)
    ours = aptune.build_model(a.model, num_classes=174, transfer_type="prompt",
                              prompt_num_tokens=a.tokens, num_frames=a.frames,
                              input_size=a.size)  # fmt: skip
    x = torch.randn(a.batch, 3, a.frames, a.size, a.size)
    y = torch.zeros(a.batch, dtype=torch.long)
    bf16, fp32 = Precision("bf16", "cpu"), Precision("fp32", "cpu")
    print(f"{a.model} {a.frames}x{a.size}, batch {a.batch}, APT {a.tokens} tokens, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{'CPU' if cpu else 'wall'} seconds")  # fmt: skip

    if a.alone is not None:  # before anything else touches the heap
        return alone(ours, a.alone, x, y, fp32 if a.fp32 else bf16, a.profile, a.forward)

    def with_impl(model: nn.Module, impl: str, step: Callable) -> Callable:
        def run() -> None:
            model.set_attn_impl(impl)
            step()

        return run

    cast = copy.deepcopy(ours)
    cast_frozen_weights(cast, torch.bfloat16)
    auto = copy.deepcopy(ours)
    flags = RunConfig.from_values(dict(batch_size=a.batch, num_frames=a.frames,
                                       input_size=a.size))  # fmt: skip
    prepare_model_for_speed(auto, flags, DistInfo(), bf16)
    picked = auto.blocks[0].attn.attn_impl
    ref = RefViT(ours)
    models = {"reference-style": (ref, None), "sdpa": (ours, "sdpa"), "plain": (ours, "plain"),
              "recompute": (ours, "recompute"), "sdpa + bf16 frozen": (cast, "sdpa"),
              "plain + bf16 frozen": (cast, "plain"),
              "recompute + bf16 frozen": (cast, "recompute"),
              f"auto ({picked}) + bf16 frozen": (auto, None)}  # fmt: skip
    steps = {}
    for name, (model, impl) in models.items():
        step = train_step(model, x, y, bf16)
        steps[name] = with_impl(model, impl, step) if impl else step
    if not a.no_compile:
        compiled = torch.compile(auto)
        steps[f"auto ({picked}) + bf16 frozen + compile"] = train_step(compiled, x, y, bf16)
        start = time.perf_counter()
        steps[f"auto ({picked}) + bf16 frozen + compile"]()
        print(f"  torch.compile: first step {time.perf_counter() - start:.0f} s (compilation)")
    flops = step_flops(with_impl(ours, "plain", train_step(ours, x, y, bf16)))
    dim = ours.embed_dim
    tokens = ours.patch_embed.num_patches * a.batch
    gemm = gemm_gflops(tokens, dim, 4 * dim, torch.bfloat16)
    print(f"bf16 GEMM ({tokens}x{dim} @ {dim}x{4 * dim}): {gemm:.0f} GFLOP/s; step "
          f"{flops / 1e9:.0f} GFLOP -> floor {flops / gemm / 1e9:.3f} s")  # fmt: skip
    memory = {}
    for name, (model, impl) in models.items():
        if impl:
            model.set_attn_impl(impl)
        memory[name] = saved_bytes(model, x, bf16)
    print(f"timing bf16 ({a.rounds} rounds)...")
    times, faults = median_times(steps, a.rounds)
    report("bf16 autocast", times, memory, faults, "reference-style", flops / gemm / 1e9)
    if a.no_fp32:
        return
    fp32_models = {"reference-style": (ref, None), "sdpa": (ours, "sdpa"), "plain": (ours, "plain"),
                   "recompute": (ours, "recompute")}  # fmt: skip
    steps = {}
    memory = {}
    for name, (model, impl) in fp32_models.items():
        step = train_step(model, x, y, fp32)
        steps[name] = with_impl(model, impl, step) if impl else step
        if impl:
            model.set_attn_impl(impl)
        memory[name] = saved_bytes(model, x, fp32)
    auto32 = copy.deepcopy(ours)
    prepare_model_for_speed(auto32, flags, DistInfo(), fp32)
    print(f"timing fp32 ({a.rounds} rounds)...")
    times, faults = median_times(steps, a.rounds)
    report(
        f"fp32 (auto picks {auto32.blocks[0].attn.attn_impl})",
        times,
        memory,
        faults,
        "reference-style",
        None,
    )


ALONE = (
    "reference-style",
    "sdpa",
    "plain",
    "recompute",
    "sdpa + bf16 frozen",
    "plain + bf16 frozen",
    "recompute + bf16 frozen",
)


def alone(ours: nn.Module, name: str, x: torch.Tensor, y: torch.Tensor, precision,
          profile: bool = False, forward: bool = False) -> None:  # fmt: skip
    """One configuration by itself, nothing else built or run in the process: its page
    faults and CPU seconds, step by step (what it pays in its own process); with
    ``profile``, where two more steps spend their time, op by op; with ``forward``,
    evaluation forwards instead of train steps."""
    if name not in ALONE:
        raise SystemExit(f"--alone: one of {', '.join(map(repr, ALONE))}; got {name!r}")
    if name == "reference-style":
        model: nn.Module = RefViT(ours)
    else:
        model = ours
        model.set_attn_impl(name.split(" + ")[0])
        if name.endswith("bf16 frozen"):
            cast_frozen_weights(model, torch.bfloat16)
    step = forward_step(model, x, precision) if forward else train_step(model, x, y, precision)
    for i in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF)
        start = time.process_time()
        step()
        seconds = time.process_time() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(f"  {name}, step {i + 1}: {seconds:.3f} s, {after.ru_minflt - before.ru_minflt} "
              f"page faults, {after.ru_stime - before.ru_stime:.3f} s system time")  # fmt: skip
    if profile:
        with torch.profiler.profile() as prof:
            for _ in range(2):
                step()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
        print(f"{name}, 2 steps ({precision.name}):\n{table}")


def report(title: str, times: dict, memory: dict, faults: dict, base: str,
           floor: float | None) -> None:  # fmt: skip
    """Median s/step; the speed-up as the median over rounds of ``base``'s step over this
    one's *in the same round*, with the lowest and highest of those ratios: the machine's
    speed drifts between rounds, and pairing within a round cancels what drifts slowly."""
    print(f"\n{title}: median s/step, speed-up over {base} (median of per-round ratios, "
          "lowest-highest), activation memory, page faults")  # fmt: skip
    head = f"{'configuration':<40}{'s/step':>8}{'speed-up':>10}{'range':>13}{'act. MB':>9}"
    print(head + f"{'mem ratio':>11}{'faults':>9}" + (f"{'x floor':>9}" if floor else ""))
    for name, ts in times.items():
        t = statistics.median(ts)
        ratios = [b / x for b, x in zip(times[base], ts)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        mem = memory.get(name)
        mem_txt = f"{mem / 2**20:>9.0f}{mem / memory[base]:>10.2f}x" if mem else f"{'':>20}"
        line = f"{name:<40}{t:>8.3f}{statistics.median(ratios):>9.2f}x{spread:>13}" + mem_txt
        print(line + f"{faults[name]:>9.0f}" + (f"{t / floor:>8.1f}x" if floor else ""))


if __name__ == "__main__":
    main()
