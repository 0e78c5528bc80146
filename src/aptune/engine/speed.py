"""The model step made fast on the machine at hand, without changing what is computed.

Three independent measures, applied by :func:`prepare_model_for_speed` once per run:

* **frozen weights in the compute dtype**: under bf16/fp16 autocast, ``F.linear`` and the
  convolutions cast their fp32 weights to the low dtype at every call, and autocast's cache
  keeps only tensors that require grad, so a frozen backbone is re-cast every step. Those
  weights are stored once in the compute dtype instead. Only the tensors autocast would
  cast anyway (Linear/Conv weights and biases, the q/v biases that feed ``F.linear``) are
  converted, so the results are the same bits; LayerNorms, layer-scales, trainable tensors
  and therefore the optimiser state stay fp32.
* **the faster attention path**: which of the fused SDPA kernel, the plain matmul+softmax
  path and (CPU training) the recomputing kernel is faster depends on the machine and the
  dtype (issue 13); with ``--attn_impl auto`` the candidates are timed on the run's own
  shapes and the fastest is kept. The plain path keeps a (B, h, N, N+M) score tensor per
  block for backward, so it is not even timed when those would not fit in memory; the
  recomputing kernel keeps what SDPA keeps.
* ``--compile``: ``torch.compile`` around the model (``engine.distributed.unwrap`` strips it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from aptune.engine.distributed import DistInfo, all_gather_objects, unwrap
from aptune.engine.loop import Precision
from aptune.models.vit import ATTN_IMPLS, Attention, VisionTransformer

log = logging.getLogger("aptune")

IMPLS = ATTN_IMPLS
#: modules whose floating-point parameters autocast casts to the low dtype at every call
_LOW_PRECISION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: share of the available memory plain attention's scores may take (the rest of the
#: activations, the weights and other processes need room too)
MEMORY_SHARE = 0.5
#: how much faster plain must time to be picked: it keeps about 3x the activations of the
#: other two. In eleven benchmark runs here (docs/performance.md, runs E-O) plain's
#: steady-state bf16 step was at most 10% faster than recompute's (and up to 42% slower),
#: while the start-up timing favoured plain by 15% and 17.5% in two runs where its steady
#: state was 3% slower and equal; so plain is taken only where it times 35% faster than
#: the best memory-lean kernel, beyond both
PLAIN_MARGIN = 0.35


# -- frozen weights ------------------------------------------------------------------------
def cast_frozen_weights(model: nn.Module, dtype: torch.dtype) -> int:
    """Store frozen Linear/Conv weights and biases (and Attention's q/v biases) in ``dtype``.

    Returns how many tensors were converted. Trainable tensors are never touched, so the
    optimiser state built from them stays fp32, and a model with everything trainable
    (full fine-tuning) is unchanged.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, _LOW_PRECISION_MODULES):
            names = ("weight", "bias")
        elif isinstance(module, Attention):
            names = ("q_bias", "v_bias")  # concatenated, then fed to F.linear
        else:
            continue
        for name in names:
            p = module._parameters.get(name)
            if p is None or p.requires_grad or not p.is_floating_point() or p.dtype == dtype:
                continue
            p.data = p.data.to(dtype)
            count += 1
    return count


#: (limit, usage) files of cgroup v2 and v1: a container's own memory limit
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


# -- memory --------------------------------------------------------------------------------
def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(device: torch.device) -> int | None:
    """Free bytes for new tensors on ``device``: CUDA free memory, or on CPU the smaller of
    the system's available RAM and what the cgroup limit leaves; None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    candidates = [_meminfo_available()]
    for limit_file, used_file in _CGROUP_FILES:
        limit, used = _read_int(limit_file), _read_int(used_file)
        if limit is not None and used is not None and limit < 1 << 60:
            candidates.append(max(limit - used, 0))
    if candidates[0] is None:
        try:
            candidates[0] = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    known = [c for c in candidates if c is not None]
    return min(known) if known else None


def plain_score_bytes(model: VisionTransformer, batch: int, dtype: torch.dtype, train: bool) -> int:
    """Peak bytes of plain attention's (B, h, N, N+M) score tensors.

    Training keeps one (the softmax output) per block that needs grad for backward; two
    more exist while a block computes (scores and their softmax, or their gradients).
    """
    n = model.patch_embed.num_patches + int(getattr(model.seq_prompts, "num_tokens", 0) or 0)
    m = int(getattr(model.kv_prompts, "num_tokens", 0) or 0)
    per_block = batch * model.num_heads * n * (n + m) * torch.empty((), dtype=dtype).element_size()
    kept = model.depth - model.no_grad_prefix() if train else 0
    return per_block * (kept + 2)


# -- timing --------------------------------------------------------------------------------
@dataclass
class AttnChoice:
    """What ``--attn_impl`` resolved to, and why (one log line)."""

    impl: str
    requested: str
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""

    def log_line(self) -> str:
        if not self.seconds:
            return f"attention: {self.impl} ({self.reason})"
        timed = ", ".join(f"{k} {v:.3f} s" for k, v in self.seconds.items())
        return f"attention auto: {timed} per {self.reason} -> {self.impl}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_timer(
    model: VisionTransformer, x: torch.Tensor, precision: Precision, train: bool
) -> Callable[[str], float]:
    """A function ``impl -> seconds`` of one step as the run does it: forward + backward
    with the model's own trainable set (training) or a no-grad forward (evaluation)."""

    def run(impl: str) -> float:
        model.set_attn_impl(impl)  # type: ignore[arg-type]
        _sync(x.device)
        start = time.perf_counter()
        if train:
            with precision.autocast():
                out = model(x)
            out.float().square().mean().backward()
        else:
            with torch.no_grad(), precision.autocast():
                model(x)
        _sync(x.device)
        return time.perf_counter() - start

    return run


def time_impls(
    measure: Callable[[str], float],
    warmup: int = 1,
    repeats: int = 3,
    slow: float = 10.0,
    impls: tuple[str, ...] = ("sdpa", "plain"),
) -> dict[str, float]:
    """Median seconds per impl, interleaved so a noisy neighbour hits all; one timed
    repeat each only when a warm-up step is slower than ``slow`` seconds (a single sample
    of a 2-6 s CPU step misjudged the kernels by up to 30% here, so those get three)."""
    samples: dict[str, list[float]] = {impl: [] for impl in impls}
    warm: list[float] = []
    r = 0
    while r < warmup + repeats:
        order = impls if r % 2 == 0 else impls[::-1]
        for impl in order:
            t = measure(impl)
            (samples[impl] if r >= warmup else warm).append(t)
        r += 1
        if r == warmup and warm and max(warm) > slow:
            repeats = 1
    return {impl: statistics.median(v) for impl, v in samples.items()}


def choose_attn_impl(
    model: VisionTransformer,
    requested: str,
    batch: int,
    dtype: torch.dtype,
    train: bool,
    measure: Callable[[str], float] | None,
    available: int | None,
    warmup: int = 1,
    repeats: int = 3,
    device: torch.device | str = "cpu",
) -> AttnChoice:
    """Resolve ``--attn_impl``; ``auto`` times the candidates with ``measure``: sdpa; the
    recomputing kernel when training on a CPU (elsewhere it is sdpa itself, and a forward
    runs the same fused kernel); plain unless its score tensors would exceed
    ``MEMORY_SHARE`` of ``available`` bytes. A lone candidate is taken without timing;
    plain must be ``PLAIN_MARGIN`` faster than the best memory-lean kernel to be taken."""
    if requested in IMPLS:
        return AttnChoice(requested, requested, reason=f"--attn_impl {requested}")
    if requested != "auto":
        names = ", ".join(("auto",) + IMPLS)
        raise ValueError(f"--attn_impl must be one of {names}; got {requested!r}")
    candidates = ["sdpa"]
    if train and torch.device(device).type == "cpu":
        candidates.append("recompute")
    need = plain_score_bytes(model, batch, dtype, train)
    skipped = ""
    if available is None or need > MEMORY_SHARE * available:
        have = "unknown" if available is None else f"{available / 2**30:.1f} GiB available"
        skipped = f"plain attention would hold {need / 2**30:.1f} GiB of scores, {have}"
    else:
        candidates.append("plain")
    if len(candidates) == 1:
        return AttnChoice("sdpa", requested, reason=f"auto; {skipped}: sdpa, plain not timed")
    if measure is None:
        raise ValueError("choose_attn_impl: --attn_impl auto needs a step to time")
    seconds = time_impls(measure, warmup, repeats, impls=tuple(candidates))
    weight = {"plain": 1.0 + PLAIN_MARGIN}
    # ties keep the earlier candidate: sdpa, then recompute
    best = min(candidates, key=lambda impl: seconds[impl] * weight.get(impl, 1.0))
    kind = "train step" if train else "forward"
    dname = str(dtype).replace("torch.", "")
    reason = f"{kind} ({dname}, batch {batch})"
    if skipped:
        reason += f"; plain not timed: {skipped}"
    return AttnChoice(best, requested, seconds, reason=reason)


# -- the entry point -------------------------------------------------------------------------
def sample_shape(args: argparse.Namespace, train: bool) -> tuple[int, int, int, int, int]:
    """(B, 3, T, H, W) of the run's batches, from the flags."""
    batch = args.batch_size if train else (getattr(args, "batch_size_val", None) or args.batch_size)
    return (batch, 3, args.num_frames, args.input_size, args.input_size)


def _timed_choice(
    model: VisionTransformer,
    requested: str,
    x: torch.Tensor,
    precision: Precision,
    train: bool,
    available: int | None,
) -> AttnChoice:
    """Time on ``x`` without leaving a trace: RNG state, train/eval mode and grads restored."""
    dtype = precision.dtype or torch.float32
    was_training = model.training
    grads = {p: p.grad for p in model.parameters() if p.requires_grad}
    devices = [x.device.index or 0] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train(train)
            measure = step_timer(model, x, precision, train)
            return choose_attn_impl(
                model, requested, x.shape[0], dtype, train, measure, available, device=x.device
            )
    finally:
        model.train(was_training)
        for p, g in grads.items():
            p.grad = g


ATTN_FILE = "attention.json"


def _stored_choice(run_dir: Path | None) -> str | None:
    """The kernel this run chose at its first start, if it was ``auto`` and recorded."""
    path = None if run_dir is None else Path(run_dir) / ATTN_FILE
    if path is None or not path.is_file():
        return None
    try:
        impl = json.loads(path.read_text()).get("attn_impl")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: time again (and rewrite it)
    return impl if impl in IMPLS else None


def _store_choice(run_dir: Path, impl: str) -> None:
    path = Path(run_dir) / ATTN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"attn_impl": impl}) + "\n")
    os.replace(tmp, path)


def prepare_model_for_speed(
    model: nn.Module,
    args: argparse.Namespace,
    info: DistInfo,
    precision: Precision,
    train: bool = True,
    sample: torch.Tensor | None = None,
    run_dir: Path | None = None,
) -> nn.Module:
    """Frozen-weight cast, attention choice (``--attn_impl``) and ``--compile``, in that order.

    Call once, after the model is built, on its device, with its checkpoint loaded and its
    trainable set marked, and before DDP, the optimiser and the EMA copy are made. Returns
    the model to train (the compiled wrapper with ``--compile``; ``unwrap`` gives the bare
    one). ``sample`` is a batch of the run's shape; by default random clips of the shape the
    flags give. Under DDP rank 0 times and every rank takes its choice. With ``run_dir``
    the ``auto`` choice is written to ``run_dir/attention.json`` and a restart of the run
    reads it back instead of timing again: the two kernels agree only to rounding, so a
    resumed run must keep its kernel to end with the uninterrupted run's exact weights.
    """
    bare = unwrap(model)
    if precision.dtype is not None:
        cast = cast_frozen_weights(bare, precision.dtype)
        if cast and info.is_main:
            log.info("frozen weights stored in %s: %d tensors", precision.name, cast)
    requested = getattr(args, "attn_impl", "auto")
    choice = None
    if info.is_main or requested != "auto":
        if sample is None and requested == "auto":
            gen = torch.Generator().manual_seed(0)
            sample = torch.randn(sample_shape(args, train), generator=gen)
        x = sample.to(info.device) if sample is not None else None
        stored = _stored_choice(run_dir) if requested == "auto" else None
        if stored is not None:
            choice = AttnChoice(stored, requested, reason=f"kept from {run_dir / ATTN_FILE}")
        elif x is None:
            choice = AttnChoice(requested, requested, reason=f"--attn_impl {requested}")
        else:
            choice = _timed_choice(bare, requested, x, precision, train, available_memory(x.device))
            if run_dir is not None and requested == "auto":
                _store_choice(run_dir, choice.impl)
    if info.enabled and requested == "auto":
        choice = all_gather_objects(choice, info)[0]
    assert choice is not None
    bare.set_attn_impl(choice.impl)  # type: ignore[operator]
    if info.is_main:
        log.info(choice.log_line())
    if getattr(args, "compile", False):
        model = torch.compile(model)
    return model


__all__ = [
    "AttnChoice",
    "available_memory",
    "cast_frozen_weights",
    "choose_attn_impl",
    "plain_score_bytes",
    "prepare_model_for_speed",
    "time_impls",
]
