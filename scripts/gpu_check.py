"""Check a GPU machine in one command and print one Markdown table.

    bash scripts/gpu_check.sh                 # on a GPU machine: about 1 minute on one H100
    bash scripts/gpu_check.sh --device cpu    # the same checks, shrunk, on a CPU

Rows: the environment and what ``--precision auto`` picks; the tests that need CUDA; every
attention kernel x {fp32, fp16, bf16}, forward and backward, on a ViT-S APT model against
fp32 SDPA; ``aptune train`` smoke runs per precision and ``--aug_device`` with CUDA's sync
debug mode counting host syncs per step; ms/step and peak memory of ViT-B APT 16x224 at
batch 8 in bf16 and fp16 with and without ``--use_checkpoint``; training clips/s with
augmentation on the GPU and in the workers; a 2-GPU torchrun run killed and resumed when
two GPUs exist. A row that fails says FAIL; the exit status is 1 if any did.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable
from contextlib import redirect_stdout
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
Row = tuple[str, str, str]  # (check, result, status)


class Check:
    """Collects rows; a check that raises becomes a FAIL row with the error's last line."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def run(self, name: str, fn: Callable[[], list[Row] | Row]) -> None:
        start = time.perf_counter()
        try:
            out = fn()
            new = out if isinstance(out, list) else [out]
        except Exception as exc:  # a failing check must not hide the others
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            new = [(name, last[:160], "FAIL")]
        self.rows += new
        # Each row as soon as it is known: a run cut short still leaves what it measured.
        for c, r, s in new:
            print(f"[gpu_check] | {c} | {r} | {s} |", file=sys.stderr, flush=True)
        print(f"[gpu_check] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr)

    def table(self) -> str:
        lines = ["| check | result | status |", "| --- | --- | --- |"]
        lines += [f"| {c} | {r} | {s} |" for c, r, s in self.rows]
        return "\n".join(lines)

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for _, _, s in self.rows)


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (compute capability 8.0+): what --precision auto and --bf16 accept."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


# -- environment ---------------------------------------------------------------------------
def environment(device: torch.device) -> list[Row]:
    from aptune.engine.loop import resolve_precision

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        cap = ".".join(map(str, torch.cuda.get_device_capability(device)))
        what = f"{name}, capability {cap}, {torch.cuda.device_count()} GPU(s)"
    else:
        what = f"CPU, {os.cpu_count()} cores"
    auto = resolve_precision("auto", device).name
    return [("machine", f"{what}; torch {torch.__version__}", "info"),
            ("--precision auto", auto, "info")]  # fmt: skip


def cuda_tests(device: torch.device) -> Row:
    """The suite's tests that skip without CUDA (names with cuda/gpu), run here."""
    if device.type != "cuda":
        return ("CUDA-only tests", "no CUDA device", "skipped")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda or gpu",
           "-m", "not slow", str(REPO / "tests")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    return ("CUDA-only tests", summary, "ok" if proc.returncode in (0, 5) else "FAIL")


# -- attention kernels ---------------------------------------------------------------------
def _apt(model: str, frames: int, size: int, impl: str, device: torch.device,
         head_scale: float = 0.001):  # fmt: skip
    import aptune

    torch.manual_seed(0)
    net = aptune.build_model(model, num_classes=10, num_frames=frames, input_size=size,
                             transfer_type="prompt", prompt_num_tokens=4,
                             attn_impl=impl, init_scale=head_scale)  # fmt: skip
    return net.to(device)


def _prompt_grad(net, x: torch.Tensor, dtype: torch.dtype | None) -> tuple[torch.Tensor, float]:
    """(the prompt keys' gradient of sum(logits), the loss scale it took).

    fp16 trains under a dynamic loss scale (GradScaler): as it does, start at 2^16 and halve
    while anything overflows, so small gradients are not lost below fp16's smallest number.
    """
    device = x.device
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else torch.autocast(
        device.type, enabled=False)  # fmt: skip
    scale = 2.0**16 if dtype is torch.float16 else 1.0
    while True:
        net.zero_grad(set_to_none=True)
        with ctx:
            out = net(x)
        (out.float().sum() * scale).backward()
        grad = net.kv_prompts.prompt_embeddings_k.grad
        if scale <= 1.0 or (out.isfinite().all() and grad.isfinite().all()):
            return grad.float() / scale, scale
        scale /= 2


def kernels(device: torch.device, quick: bool) -> list[Row]:
    """Each kernel x dtype against fp32 SDPA, for a fresh head (VideoMAE's init, weights
    x 0.001) and one of a trained head's size (std 0.02). A fresh head makes every backbone
    gradient about 1e-9, where fp16's few bits show most: that row is for information."""
    model, frames, size = ("vit_nano", 4, 32) if quick else ("vit_small", 16, 224)
    x = torch.randn(2, 3, frames, size, size, device=device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if device.type == "cpu":
        dtypes.pop("fp16")  # CPU training runs fp32 or bf16
    rows = []
    for head_scale, head in ((1.0, "trained-size head"), (0.001, "fresh head")):
        want, _ = _prompt_grad(_apt(model, frames, size, "sdpa", device, head_scale), x, None)
        for impl in ("sdpa", "plain", "recompute"):
            for name, dtype in dtypes.items():
                if head_scale != 1.0 and dtype is not torch.float16:
                    continue  # the fresh head is shown where it matters: fp16
                net = _apt(model, frames, size, impl, device, head_scale)
                got, scale = _prompt_grad(net, x, dtype)
                err = float((got - want).norm() / want.norm().clamp_min(1e-12))
                tol = 1e-4 if dtype is None else 5e-2
                status = "ok" if err < tol else "FAIL"
                status = "info" if head_scale != 1.0 else status
                name += f", loss x 2^{int(math.log2(scale))}" if scale != 1.0 else ""
                rows.append((f"kernel {impl} {name} fwd+bwd ({model}, {head})",
                             f"prompt-grad rel. error {err:.1e}", status))  # fmt: skip
    return rows


# -- training smoke runs -------------------------------------------------------------------
def _dataset(root: Path) -> Path:
    from aptune.data.synthetic import make_action_dataset

    make_action_dataset(root, num_classes=4, videos_per_class={"train": 4, "val": 1, "test": 1},
                        num_frames=16, size=(64, 64))  # fmt: skip
    return root


def _train_flags(data: Path, out: Path, device: torch.device, precision: str, aug: str,
                 steps: int) -> list[str]:  # fmt: skip
    return ["--model", "vit_nano", "--data_set", "SSV2", "--nb_classes", "4", "--num_frames", "8",
            "--input_size", "32", "--short_side_size", "32", "--data_path", str(data),
            "--output_dir", str(out), "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0",
            "--opt", "adamw", "--lr", "0.01", "--num_workers", "0", "--no_progress",
            "--test_num_segment", "1", "--test_num_crop", "1", "--num_sample", "1",
            "--max_steps_per_epoch", str(steps), "--precision", precision, "--aug_device", aug,
            "--device", str(device), "--no_auto_resume",
            "--disable_eval_during_finetuning"]  # fmt: skip


def _count_syncs(flags: list[str], device: torch.device) -> tuple[int, int]:
    """(exit code, host synchronisations CUDA's sync debug mode reported) for one run."""
    from aptune.cli import main

    with warnings.catch_warnings(record=True) as caught, redirect_stdout(sys.stderr):
        warnings.simplefilter("always")
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        try:
            code = main(["train", *flags])
        finally:
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    where = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    if where:  # where a run waits for the GPU, for whoever reads the log
        print(f"[gpu_check] syncs by caller: {dict(where.most_common(8))}", file=sys.stderr)
    return code, len(syncs)


def train_smoke(device: torch.device, work: Path) -> list[Row]:
    """Each precision x augmentation device, run for a few and for more steps at batch 1.

    Start-up, evaluation and checkpoints cost the same in both runs, so the difference in
    synchronisations over the difference in steps is what one training step costs.
    """
    data = _dataset(work / "data")
    precisions = ["fp16", "bf16", "fp32"] if device.type == "cuda" else ["bf16", "fp32"]
    if device.type == "cuda" and not native_bf16(device):
        precisions.remove("bf16")
    augs = ["cuda", "cpu"] if device.type == "cuda" else ["cpu"]
    rows, short, long = [], 3, 11
    for precision in precisions:
        for aug in augs:
            counts, ok = {}, True
            for steps in (short, long):
                out = work / f"run_{precision}_{aug}_{steps}"
                flags = _train_flags(data, out, device, precision, aug, steps)
                flags[flags.index("--batch_size") + 1] = "1"
                code, counts[steps] = _count_syncs(flags, device)
                ok = ok and code == 0 and (out / "metrics.json").is_file()
            if device.type == "cuda":
                per_step = (counts[long] - counts[short]) / (long - short)
                fixed = counts[short] - short * per_step
                what = f"{per_step:.1f} syncs per step; {fixed:.0f} in start-up, test, saving"
            else:
                what = "syncs n/a on CPU"
            rows.append((f"aptune train {precision}, --aug_device {aug}",
                         f"exit {'0' if ok else 'non-zero'}; {what}",
                         "ok" if ok else "FAIL"))  # fmt: skip
    return rows


# -- speed and memory ----------------------------------------------------------------------
def _time_steps(net, x: torch.Tensor, dtype: torch.dtype, steps: int = 10) -> tuple[float, str]:
    """(ms per APT train step after one warm-up step, peak memory or n/a on a CPU)."""
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    device = x.device

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = net(x).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: kernels chosen, memory pools filled
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB peak"
    else:
        peak = "peak n/a on CPU"
    return (time.perf_counter() - start) / steps * 1e3, peak


def step_cost(device: torch.device, quick: bool) -> list[Row]:
    import aptune

    model, frames, size, batch = ("vit_nano", 4, 32, 2) if quick else (
        "vit_base_patch16_224", 16, 224, 8)  # fmt: skip
    dtypes = [("bf16", torch.bfloat16)] if device.type == "cpu" or native_bf16(device) else []
    if device.type == "cuda":
        dtypes.append(("fp16", torch.float16))
    rows = []
    for name, dtype in dtypes:
        for ckpt in (False, True):
            torch.manual_seed(0)
            net = aptune.build_model(model, num_classes=174, num_frames=frames, input_size=size,
                                     transfer_type="prompt", prompt_num_tokens=2,
                                     use_checkpoint=ckpt).to(device)  # fmt: skip
            x = torch.randn(batch, 3, frames, size, size, device=device)
            ms, peak = _time_steps(net, x, dtype)
            label = f"{model} APT {frames}x{size} batch {batch} {name}"
            label += " --use_checkpoint" if ckpt else ""
            rows.append((label, f"{ms:.0f} ms/step, {peak}", "ok"))
            del net
    return rows


def clips_per_s(device: torch.device, work: Path) -> list[Row]:
    if device.type != "cuda":
        return [("training clips/s, --aug_device cuda vs cpu", "no CUDA device", "skipped")]
    from aptune.cli import main

    data = work / "data" if (work / "data").is_dir() else _dataset(work / "data")
    rates = {}
    for aug in ("cuda", "cpu"):
        out = work / f"speed_{aug}"
        flags = _train_flags(data, out, device, "bf16" if native_bf16(device) else "fp16",
                             aug, 4)  # fmt: skip
        flags[flags.index("--num_workers") + 1] = str(min(8, os.cpu_count() or 1))
        start = time.perf_counter()
        with redirect_stdout(sys.stderr):
            main(["train", *flags])
        rates[aug] = 16 / (time.perf_counter() - start)
    return [("training clips/s (whole run)", f"cuda {rates['cuda']:.1f}, cpu {rates['cpu']:.1f}",
             "info")]  # fmt: skip


def two_gpu_resume(device: torch.device, work: Path) -> Row:
    if device.type != "cuda" or torch.cuda.device_count() < 2:
        return ("2-GPU torchrun kill + resume", "fewer than 2 GPUs", "skipped")
    data = work / "data" if (work / "data").is_dir() else _dataset(work / "data")
    out = work / "ddp"
    flags = _train_flags(data, out, device, "auto", "auto", 2)
    flags[flags.index("--device") + 1] = "cuda"
    flags[flags.index("--epochs") + 1] = "2"
    flags += ["--save_ckpt_freq", "1"]
    flags[flags.index("--no_auto_resume")] = "--auto_resume"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "-m", "aptune.cli", "train", *flags]  # fmt: skip
    first = subprocess.Popen(cmd, cwd=REPO)
    deadline = time.time() + 240
    while time.time() < deadline and not any(out.glob("checkpoint-0000")):
        time.sleep(1)
    first.kill()
    first.wait()
    again = subprocess.run(cmd, cwd=REPO, timeout=300)
    ok = again.returncode == 0 and (out / "metrics.json").is_file()
    return ("2-GPU torchrun kill + resume", f"resumed run exit {again.returncode}",
            "ok" if ok else "FAIL")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny models (the CPU default)")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    quick = a.quick or device.type == "cpu"
    check = Check()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        check.run("environment", lambda: environment(device))
        check.run("CUDA-only tests", lambda: cuda_tests(device))
        check.run("attention kernels", lambda: kernels(device, quick))
        check.run("aptune train smoke runs", lambda: train_smoke(device, work))
        check.run("step time and memory", lambda: step_cost(device, quick))
        check.run("training clips/s", lambda: clips_per_s(device, work))
        check.run("2-GPU torchrun kill + resume", lambda: two_gpu_resume(device, work))
    print(check.table())
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
