"""``aptune profile``: the cost side of the paper's comparison, measured on this machine.

For one backbone and input shape, each method gets a row: tunable parameters (count and %
of the backbone), forward and train-step GFLOPs counted by
``torch.utils.flop_counter.FlopCounterMode`` (CPU SDPA kernels are not in its table, so
we register the standard SDPA formulas for them), measured CPU inference latency and
train-step time (forward + backward + AdamW step; best of ``repeats`` after one
warm-up), peak resident memory, and the size of the trainable-only safetensors
checkpoint. A FLOP sweep over prompt counts (meta tensors: no compute) shows APT's
advantage over VPT-deep: APT adds keys/values only, VPT-deep adds tokens to every block.

Memory: each method runs in a fresh ``spawn`` process, so allocator caches and the model
of one method never count for the next. Peaks are Linux ``VmHWM`` (reset per phase via
``/proc/self/clear_refs``), reported absolute and as the increase over the process's RSS
before the phase (activations, gradients, optimiser state). ``ru_maxrss`` is the fallback
elsewhere; it cannot be reset, so there the train peak is a peak since process start.
The activation figures count tensors exactly (``profile_memory.step_memory``): what a
training forward keeps for backward and the peak over forward + backward.
``use_checkpoint`` adds a row per method measured with gradient checkpointing, its
activations and step time also as a ratio to the row without.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from aptune.commands.profile_flops import (  # noqa: F401 - re-exported for callers
    count_flops,
    count_inference_flops,
    flops_sweep,
    size_methods,
)
from aptune.commands.profile_memory import peak_mb, reset_peak, rss_mb, step_memory

DEFAULT_METHODS = "prompt,vpt_deep,adapter,lora,linear,end2end"
DEFAULT_SWEEP = "1,2,50,100,200,400"


# -- one method -------------------------------------------------------------------------
@dataclasses.dataclass
class Spec:
    """Everything a child process needs to measure one method."""

    model_name: str
    method: str
    num_frames: int
    input_size: int
    batch_size: int
    num_classes: int
    options: dict[str, Any]
    repeats: int
    bf16: bool
    threads: int | None = None
    use_checkpoint: bool = False


def _timed(fn: Callable[[], object], repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls; the caller reports the best (min), as ``timeit``
    advises: on a shared machine slower runs measure other processes, not the method."""
    times = []
    for _ in range(max(repeats, 1)):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def measure(spec: Spec) -> dict[str, Any]:
    """Build, count, time and weigh one method (meant to run in a fresh process)."""
    from safetensors.torch import save_file

    import aptune

    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    model = aptune.build_model(
        spec.model_name, num_classes=spec.num_classes, transfer_type=spec.method,
        num_frames=spec.num_frames, input_size=spec.input_size,
        use_checkpoint=spec.use_checkpoint, **spec.options,
    )  # fmt: skip
    report = aptune.parameter_report(model)
    trainable = {k: p.detach().contiguous() for k, p in model.named_parameters() if p.requires_grad}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trainable.safetensors"
        save_file(trainable, str(path))
        ckpt_bytes = path.stat().st_size
    del trainable
    B = spec.batch_size
    x = torch.randn(B, 3, spec.num_frames, spec.input_size, spec.input_size)
    y = torch.randint(0, spec.num_classes, (B,))
    precision = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.bf16)
    row: dict[str, Any] = {"method": spec.method, "use_checkpoint": spec.use_checkpoint}
    row["rss_model_mb"] = rss_mb()

    model.eval()

    def infer() -> None:
        with torch.no_grad(), precision:
            model(x)

    reset_peak()
    before = rss_mb()
    fwd_flops = count_inference_flops(model, infer)  # doubles as the warm-up
    latency = _timed(infer, spec.repeats)
    infer_peak = peak_mb()

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        with precision:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    reset_peak()
    train_before = rss_mb()
    train_step()  # warm-up; also allocates AdamW's state
    step = _timed(train_step, spec.repeats)
    train_peak = peak_mb()
    # both after the RSS phase, which neither may move: glibc keeps what a step frees, and
    # FlopCounterMode's module hooks keep alive tensors that checkpointing would free (3x
    # the tensor peak of a checkpointed ViT-S step)
    activations = step_memory(model, x, y, precision)
    train_flops = count_flops(train_step)
    row.update(
        trainable_params=report.trainable,
        backbone_params=report.backbone_total,
        trainable_pct=report.trainable_percent,
        fwd_gflops=fwd_flops / 1e9 / B,
        train_gflops=train_flops / 1e9 / B,
        infer_s_per_clip=min(latency) / B,
        train_s_per_clip=min(step) / B,
        infer_times_s=latency,
        train_times_s=step,
        peak_infer_mb=infer_peak,
        extra_infer_mb=max(infer_peak - before, 0.0),
        peak_train_mb=train_peak,
        extra_train_mb=max(train_peak - train_before, 0.0),
        act_kept_mb=activations["kept_mb"],
        act_peak_mb=activations["peak_mb"],
        ckpt_bytes=ckpt_bytes,
        threads=torch.get_num_threads(),
    )
    return row


def profile_methods(
    model_name: str = "vit_base_patch16_224",
    methods: list[str] | None = None,
    num_frames: int = 16,
    input_size: int = 224,
    batch_size: int = 1,
    num_classes: int = 174,
    method_options: dict[str, Any] | None = None,
    repeats: int = 3,
    bf16: bool = False,
    isolate: bool = True,
    threads: int | None = None,
    use_checkpoint: bool = False,
) -> list[dict]:
    """One row per method (see the module docstring); FLOPs are per clip.

    ``isolate`` runs each method in a fresh spawned process (honest memory figures);
    ``False`` measures in this process, for debugging. ``use_checkpoint`` follows each
    method's row with one measured with gradient checkpointing.
    """
    from aptune.tuning import parse_transfer_type

    methods = methods or DEFAULT_METHODS.split(",")
    options = {k: v for k, v in (method_options or {}).items() if v is not None}
    for method in methods:  # fail on a bad name or option before any slow work
        parse_transfer_type(method, options)
    rows = []
    for method in methods:
        for ckpt in (False, True) if use_checkpoint else (False,):
            spec = Spec(model_name, method, num_frames, input_size, batch_size, num_classes,
                        options, repeats, bf16, threads, ckpt)  # fmt: skip
            if isolate:
                with multiprocessing.get_context("spawn").Pool(1) as pool:
                    rows.append(pool.apply(measure, (spec,)))
            else:
                rows.append(measure(spec))
    base = next((r["fwd_gflops"] for r in rows if r["method"] == "linear"), None)
    for r in rows:
        r["fwd_vs_linear"] = r["fwd_gflops"] / base if base else None
    _relate_checkpointed(rows)
    return rows


def _relate_checkpointed(rows: list[dict]) -> None:
    """Checkpointed rows get their activations and step time over the row without."""
    plain = {r["method"]: r for r in rows if not r["use_checkpoint"]}
    for r in rows:
        ref = plain.get(r["method"]) if r["use_checkpoint"] else None
        if ref is None:
            continue
        r["act_peak_vs_plain"] = r["act_peak_mb"] / ref["act_peak_mb"]
        r["act_kept_vs_plain"] = r["act_kept_mb"] / ref["act_kept_mb"]
        r["train_vs_plain"] = r["train_s_per_clip"] / ref["train_s_per_clip"]


# -- the whole profile -------------------------------------------------------------------
@dataclasses.dataclass
class ProfileOptions:
    """What ``aptune profile`` measures (its flags, typed); ``command`` goes in the report."""

    model: str = "vit_base_patch16_224"
    methods: list[str] = dataclasses.field(default_factory=lambda: DEFAULT_METHODS.split(","))
    num_frames: int = 16
    input_size: int = 224
    batch_size: int = 1
    nb_classes: int = 174
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    repeats: int = 3
    bf16: bool = False
    threads: int | None = None
    use_checkpoint: bool = False
    token_sweep: list[int] = dataclasses.field(default_factory=list)
    meta: bool = False
    out: Path = Path("profile")
    command: str = ""


def profile(opts: ProfileOptions) -> dict[str, Path]:
    """Measure every method, write ``profile.{md,json,png}`` into ``opts.out``; -> paths."""
    from aptune.commands.profile_output import write_outputs
    from aptune.tuning import parse_transfer_type

    options = {k: v for k, v in opts.method_options.items() if v is not None}
    if "vpt_num_tokens" not in options:  # like-for-like with APT unless asked otherwise
        options["vpt_num_tokens"] = options.get("prompt_num_tokens", 2)
    settings = dict(
        model=opts.model, num_frames=opts.num_frames, input_size=opts.input_size,
        batch_size=opts.batch_size, nb_classes=opts.nb_classes, repeats=opts.repeats,
        bf16=opts.bf16, use_checkpoint=opts.use_checkpoint, options=options,
        command=opts.command,
        torch=torch.__version__, cpu=platform.processor() or platform.machine(),
        cpu_count=os.cpu_count(), date=time.strftime("%Y-%m-%d %H:%M"), meta=bool(opts.meta),
    )  # fmt: skip
    if opts.meta:
        for method in opts.methods:  # fail on a bad name or option before any work
            parse_transfer_type(method, options)
        rows = size_methods(opts.model, opts.methods, opts.num_frames, opts.input_size,
                            opts.nb_classes, options)  # fmt: skip
    else:
        rows = profile_methods(
            opts.model, opts.methods, opts.num_frames, opts.input_size, opts.batch_size,
            opts.nb_classes, options, opts.repeats, opts.bf16, threads=opts.threads,
            use_checkpoint=opts.use_checkpoint,
        )  # fmt: skip
    sweep = flops_sweep(opts.model, opts.token_sweep, opts.num_frames, opts.input_size,
                        opts.nb_classes) if opts.token_sweep else []  # fmt: skip
    settings["threads"] = rows[0].get("threads") if rows else None
    return write_outputs(Path(opts.out), settings, rows, sweep)


if __name__ == "__main__":  # python -m aptune.commands.profile: the same as aptune profile
    from aptune.cli.profile import main

    sys.exit(main())
