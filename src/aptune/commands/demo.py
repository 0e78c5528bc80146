"""``aptune demo``: the paper's comparison, end to end, on a fresh CPU machine.

No dataset, checkpoint or network: labelled synthetic action videos are written as real
mp4 files (classes are motions, so time order matters and a horizontal flip changes the
label, as in SSv2), then each method is fine-tuned from the bundled pre-trained backbone
with the same engine as ``aptune train`` (one child process per method, so its peak
memory is its own) and evaluated on held-out videos.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from aptune.config import ConfigError
from aptune.data.probe import usable_cpus


@dataclass(frozen=True)
class Recipe:
    """How the demo trains one method: base lr (per 256 clips) and extra flags."""

    lr: float
    flags: tuple[str, ...] = ()
    label: str = ""


RECIPES: dict[str, Recipe] = {
    "linear": Recipe(0.24, (), "linear probe"),
    "prompt": Recipe(
        2.4,
        (
            "--prompt_num_tokens",
            "64",
            "--prompt_reparam",
            "--prompt_dropout",
            "0.1",
            "--head_lr_scale",
            "0.1",
        ),
        "APT (64 tokens)",
    ),  # prompt dropout 0.1 as in every reference APT recipe; the head keeps the linear
    # probe's lr (2.4 x 0.1 = 0.24) while the prompts train at 2.4
    "vpt_deep": Recipe(1.28, ("--vpt_num_tokens", "16"), "VPT-deep (16 tokens)"),
    "adapter": Recipe(0.32, ("--adapter_dim", "16"), "AdaptFormer (dim 16)"),
    "lora": Recipe(0.16, ("--lora_rank", "4"), "LoRA (rank 4)"),
    "bitfit": Recipe(0.32, (), "BitFit"),
    "end2end": Recipe(0.032, (), "full fine-tuning"),
}  # lr per 256 clips; the demo trains with batch 16, so the step lr is lr / 16
DEFAULT_METHODS = ("linear", "prompt", "vpt_deep", "adapter", "lora", "end2end")
QUICK_METHODS = ("linear", "prompt", "end2end")


@dataclass(frozen=True)
class Scale:
    """Videos per class and epochs; ``--quick`` trades accuracy for a one-minute run.

    A step costs the same whether its clips come from new or repeated videos, and writing
    a synthetic video is cheap: many distinct training videos seen for few epochs beat few
    videos seen often. 1,000 test videos keep one standard error near 1.5 points.
    """

    train: int
    val: int
    test: int
    epochs: int
    num_classes: int = 10


FULL, QUICK = Scale(160, 4, 100, 8), Scale(6, 2, 3, 2)
BATCH_SIZE = 16


def make_data(root: Path, scale: Scale, frames: int, size: int, seed: int) -> dict:
    from aptune.data.synthetic import make_action_dataset

    if (root / "test.csv").is_file() and (root / "demo_data.json").is_file():
        info = json.loads((root / "demo_data.json").read_text())
        if info.get("scale") == list(vars(scale).values()):
            return info  # same settings: reuse the videos already written
    info = make_action_dataset(
        root,
        num_classes=scale.num_classes,
        videos_per_class={"train": scale.train, "val": scale.val, "test": scale.test},
        num_frames=frames,
        size=(size, size),
        fmt="mp4",
        seed=seed,
    )
    warm_decode_cache(root)
    info["scale"] = list(vars(scale).values())
    (root / "demo_data.json").write_text(json.dumps(info))
    return info


@functools.lru_cache(maxsize=1)
def _frame_cache(folder: str):
    from aptune.data.frame_cache import FrameCache

    return FrameCache(folder)  # one per pool process: its folder check runs once


def _decode_into_cache(job: tuple[str, str]) -> None:
    _frame_cache(job[0]).open(job[1])


def warm_decode_cache(root: Path, workers: int = 2) -> int:
    """Decode every demo video once into ``root/decode_cache``, on ``workers`` processes.

    The runs read it through ``--decode_cache``: no method pays for decoding, and the
    first one does not pay for all.
    """
    from concurrent.futures import ProcessPoolExecutor

    jobs = [(str(root / "decode_cache"), str(p)) for p in sorted((root / "videos").rglob("*.mp4"))]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_decode_into_cache, jobs, chunksize=32))
    return len(jobs)


def train_flags(
    method: str, data: Path, out: Path, scale: Scale, seed: int, backbone: Path | None = None
) -> list[str]:
    """``aptune train`` flags for one method; ``backbone`` defaults to the bundled one."""
    from aptune.pretrain import demo_backbone_config, demo_backbone_path

    cfg = demo_backbone_config(backbone)["build_model_kwargs"]
    recipe = RECIPES[method]
    flags = [
        "--model", cfg["model"], "--finetune", str(backbone or demo_backbone_path()),
        "--num_frames", str(cfg["num_frames"]), "--input_size", str(cfg["input_size"]),
        "--tubelet_size", str(cfg["tubelet_size"]), "--short_side_size", str(cfg["input_size"]),
        "--transfer_type", method, "--data_set", "SSV2", "--data_path", str(data),
        "--nb_classes", str(scale.num_classes), "--output_dir", str(out),
        "--batch_size", str(BATCH_SIZE), "--epochs", str(scale.epochs), "--warmup_epochs", "1",
        "--crop_scale", "1.0", "1.0",  # 64-px clips: keep the whole frame (only jitter)
        "--lr", str(recipe.lr), "--min_lr", "1e-4", "--weight_decay", "1e-4",
        "--warmup_lr", "1e-6", "--layer_decay", "0.75", "--batch_size_val", str(BATCH_SIZE),
        "--opt", "adamw", "--mixup", "0", "--cutmix", "0", "--reprob", "0",
        "--smoothing", "0.1", "--drop_path", "0", "--num_sample", "1",
        "--test_num_segment", "2", "--test_num_crop", "1",
        # decoded once into the cache, a clip costs less to load than to hand over from a
        # worker process: on 2 cores, loading in the training process is the fastest
        "--num_workers", "0", "--decode_cache", str(data / "decode_cache"),
        "--seed", str(seed), "--save_ckpt_freq", str(scale.epochs), "--no_progress",
        "--no_auto_resume", *recipe.flags,
    ]  # fmt: skip
    return flags


@dataclass
class Job:
    """One ``aptune train`` child: its flags and run folder; filled in when it ends."""

    key: str
    flags: list[str]
    out: Path
    code: int | None = None
    seconds: float = 0.0
    peak_bytes: int = 0


def default_parallel() -> int:
    """Children trained side by side: 2 on 2+ cores (see ``run_jobs``), else 1."""
    return 2 if usable_cpus() >= 2 else 1


def threads_per_job(parallel: int) -> int:
    """Threads each child gets when ``parallel`` children share the machine's cores."""
    return max(1, usable_cpus() // max(1, parallel))


def run_jobs(jobs: list[Job], epochs: int, bar: tqdm, parallel: int = 1) -> list[Job]:
    """Train each job in a child process, ``parallel`` at a time, each on cores/parallel threads.

    Why side by side: these models are too small for two threads to help one step much;
    on 2 cores two one-thread runs finish 1.4x more clips per second than one two-thread
    run. Every child still has its own wall time and peak memory (``wait4``).
    """
    parallel = max(1, parallel)
    threads = str(threads_per_job(parallel))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads,
           "MKL_NUM_THREADS": threads}  # fmt: skip
    pending, running, done = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.out.mkdir(parents=True, exist_ok=True)
            log = open(job.out / "demo_train.log", "w")
            proc = subprocess.Popen([sys.executable, "-m", "aptune.cli", "train", *job.flags],
                                    stdout=log, stderr=log, env=env)  # fmt: skip
            # keep `proc` referenced: a collected Popen is reaped by subprocess itself
            running[proc.pid] = (job, log, time.perf_counter(), proc)
            done[proc.pid] = 0
        for pid in list(running):
            job, log, start, proc = running[pid]
            finished, status, usage = os.wait4(pid, os.WNOHANG)
            lines = min(_epochs_logged(job.out), epochs)
            if finished:
                lines = epochs
                job.seconds = time.perf_counter() - start
                job.code = proc.returncode = os.waitstatus_to_exitcode(status)
                job.peak_bytes = int(usage.ru_maxrss) * 1024
                log.close()
                del running[pid]
            if lines > done[pid]:
                bar.update(lines - done[pid])
                done[pid] = lines
        time.sleep(0.2)
    return jobs


def _epochs_logged(out: Path) -> int:
    path = out / "log.txt"
    return sum(1 for line in path.read_text().splitlines() if line) if path.is_file() else 0


def collect(method: str, out: Path, seconds: float, peak: int) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    params = metrics["parameters"]
    history = [json.loads(line) for line in (out / "log.txt").read_text().splitlines() if line]
    return {
        "method": method,
        "label": RECIPES[method].label,
        "tunable": params["trainable"],
        "tunable_percent": params["trainable_percent_of_backbone"],
        "top1": metrics["test"]["top1"],
        "top5": metrics["test"]["top5"],
        "train_time_s": round(seconds, 1),
        "peak_memory_mb": round(peak / 2**20),
        "val_top1_curve": [h.get("val_top1") for h in history],
        "train_loss_curve": [h.get("train_loss") for h in history],
    }


def results_table(rows: list[dict]) -> str:
    head = "| method | tunable params | % of backbone | top-1 (%) | top-5 (%) | train time (s) |"
    lines = [head + " peak memory (MB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['tunable']:,} | {r['tunable_percent']:.2f} | {r['top1']:.1f} "
            f"| {r['top5']:.1f} | {r['train_time_s']:.0f} | {r['peak_memory_mb']} |"
        )
    return "\n".join(lines)


def standard_error_note(num_test: int) -> str:
    """How far apart two top-1 numbers must be to mean something (binomial error at 50%,
    its largest)."""
    se = 100 * (0.25 / num_test) ** 0.5
    pair = se * 2**0.5  # two independent estimates
    return (f"top-1 on {num_test} test videos: one standard error is at most {se:.1f} points, "
            f"{pair:.1f} for the difference of two methods")  # fmt: skip


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        ax.scatter(r["tunable"], r["top1"], s=40)
        ax.annotate(r["label"], (r["tunable"], r["top1"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")  # fmt: skip
    ax.set(xscale="log", xlabel="tunable parameters (log)", ylabel="test top-1 (%)",
           title="accuracy vs tunable parameters")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_params.png", dpi=110)
    plt.close(fig)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in rows:
        a1.plot(r["train_loss_curve"], marker=".", label=r["label"])
        a2.plot(r["val_top1_curve"], marker=".", label=r["label"])
    a1.set(xlabel="epoch", ylabel="train loss", title="training loss")
    a2.set(xlabel="epoch", ylabel="val top-1 (%)", title="validation accuracy")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)


@dataclass(frozen=True)
class DemoOptions:
    """What ``aptune demo`` runs; bad values fail here, naming the flag."""

    out: Path = Path("aptune_demo")
    quick: bool = False
    methods: tuple[str, ...] = ()  # empty: QUICK_METHODS with ``quick``, else DEFAULT_METHODS
    seed: int = 0
    backbone: Path | None = None  # None: the bundled backbone
    jobs: int | None = None  # None: default_parallel()
    quiet: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in RECIPES]
        if unknown:
            raise ConfigError(
                f"--methods: unknown {unknown[0]!r}; choose from {', '.join(RECIPES)}"
            )
        if self.jobs is not None and self.jobs < 1:
            raise ConfigError(f"--jobs must be >= 1, got {self.jobs}")

    def method_list(self) -> list[str]:
        if self.methods:
            return list(self.methods)
        return list(QUICK_METHODS if self.quick else DEFAULT_METHODS)


def run_demo(opts: DemoOptions) -> int:
    """Write the videos, train every method, print and save the table; 1 if any failed."""
    from aptune.pretrain import demo_backbone_config

    methods = opts.method_list()
    scale = QUICK if opts.quick else FULL
    out = Path(opts.out).resolve()
    backbone = Path(opts.backbone).resolve() if opts.backbone else None
    cfg = demo_backbone_config(backbone)
    frames = int(cfg["data"].get("frames_per_video", 16))
    size = int(cfg["build_model_kwargs"]["input_size"])
    start = time.perf_counter()
    counts = f"{scale.train}/{scale.val}/{scale.test}"
    print(f"aptune demo: {scale.num_classes} classes x {counts} train/val/test videos "
          f"in {out / 'data'}")  # fmt: skip
    make_data(out / "data", scale, frames, size, opts.seed)
    rows, failed = [], []
    bar = tqdm(total=len(methods) * scale.epochs, desc="demo", unit="epoch", disable=opts.quiet)
    jobs = [
        Job(m, train_flags(m, out / "data", out / "runs" / m, scale, opts.seed, backbone),
            out / "runs" / m)
        for m in methods
    ]  # fmt: skip
    parallel = opts.jobs or default_parallel()
    bar.set_postfix_str(f"{parallel} method(s) at a time")
    for job in run_jobs(jobs, scale.epochs, bar, parallel):
        if job.code != 0:
            failed.append(job.key)
            tqdm.write(f"{job.key}: training failed (exit {job.code}); "
                       f"see {job.out / 'demo_train.log'}")  # fmt: skip
            continue
        rows.append(collect(job.key, job.out, job.seconds, job.peak_bytes))
    bar.close()
    if not rows:
        return 1
    table = results_table(rows)
    note = standard_error_note(scale.test * scale.num_classes)
    note += (f"\ntrain time: wall seconds of each run, {parallel} run(s) side by side on "
             f"{threads_per_job(parallel)} thread(s) each")  # fmt: skip
    (out / "demo_results.md").write_text(f"{table}\n\n{note}\n")
    (out / "demo_results.json").write_text(json.dumps(rows, indent=2))
    plot(rows, out)
    print(table)
    print(note)
    print(f"\nfinished in {time.perf_counter() - start:.0f} s. Results: {out / 'demo_results.md'}"
          f", {out / 'demo_results.json'}, plots {out / 'accuracy_vs_params.png'} and "
          f"{out / 'learning_curves.png'}; runs in {out / 'runs'}")  # fmt: skip
    return 1 if failed else 0
