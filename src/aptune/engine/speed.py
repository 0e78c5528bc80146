"""The model step made fast on the machine at hand, without changing what is computed.

Three independent measures, applied by :func:`prepare_model_for_speed` once per run:

* **frozen weights in the compute dtype**: under bf16/fp16 autocast, ``F.linear`` and the
  convolutions cast their fp32 weights to the low dtype at every call, and autocast's cache
  keeps only tensors that require grad, so a frozen backbone is re-cast every step. Those
  weights are stored once in the compute dtype instead. Only the tensors autocast would
  cast anyway (Linear/Conv weights and biases, the q/v biases that feed ``F.linear``) are
  converted, so the results are the same bits; LayerNorms, layer-scales, trainable tensors
  and therefore the optimiser state stay fp32.
* **the attention kernel** (``--attn_impl auto``), by rule rather than by timing:

  - SDPA off the CPU: on GPUs its flash / memory-efficient kernels are the training path;
    aptune's plain and recomputing kernels are CPU-tuned and run there only when asked.
  - SDPA on a CPU in fp32: the fused kernel ran the fp32 train step 1.70x (AMD EPYC) and
    1.72x (Intel Xeon with AMX) the reference-style one, and an fp32 forward 1.6x plain's
    (docs/performance.md).
  - plain on a CPU under bf16/fp16 autocast: the reference's own algorithm with row-major
    operands and a written-out backward, so not slower than the reference-style model
    (train step 1.02x on an AMD EPYC without AMX, where SDPA ran 0.75x and the recomputing
    kernel 0.86x, and a forward 1.28x SDPA's there; 1.3-1.6x on an AMX Xeon, where
    ``--attn_impl recompute`` trains about 10% faster still). Plain keeps a (B, h, N, N+M)
    score tensor per block, about the reference's memory; where those would not fit, the
    recomputing kernel trains instead (SDPA's memory, faster than SDPA in bf16 on both
    CPUs) and SDPA runs the forward-only work.

  Nothing is timed at start-up: timings of a few steps on a shared machine were off by up
  to 17%, more than the best kernel gains over this rule's choice (about 10%, AMX Xeon).
* ``--compile``: ``torch.compile`` around the model (``engine.distributed.unwrap`` strips it).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aptune.config import RunConfig
from aptune.engine.distributed import DistInfo, all_gather_objects, unwrap
from aptune.engine.loop import Precision
from aptune.models.attention_kernels import recompute_supported
from aptune.models.vit import ATTN_IMPLS, Attention, VisionTransformer

log = logging.getLogger("aptune")

IMPLS = ATTN_IMPLS
#: modules whose floating-point parameters autocast casts to the low dtype at every call
_LOW_PRECISION_MODULES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: share of the available memory plain attention's scores may take (the rest of the
#: activations, the weights and other processes need room too)
MEMORY_SHARE = 0.5
#: autocast dtypes under which plain attention is the CPU training kernel
_REDUCED = (torch.bfloat16, torch.float16)


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


# -- the choice -----------------------------------------------------------------------------
@dataclass
class AttnChoice:
    """What ``--attn_impl`` resolved to, and why (one log line)."""

    impl: str
    requested: str
    reason: str = ""

    def log_line(self) -> str:
        return f"attention {self.requested}: {self.impl} ({self.reason})"


def _plain_fits(need: int, available: int | None) -> tuple[bool, str]:
    """Whether plain's scores fit in ``MEMORY_SHARE`` of ``available`` bytes, and the figures."""
    have = "memory unknown" if available is None else f"{available / 2**30:.1f} GiB available"
    fits = available is not None and need <= MEMORY_SHARE * available
    return fits, f"plain's scores {need / 2**30:.1f} GiB, {have}"


def choose_attn_impl(
    model: VisionTransformer,
    requested: str,
    batch: int,
    dtype: torch.dtype,
    train: bool,
    available: int | None,
    device: torch.device | str = "cpu",
) -> AttnChoice:
    """Resolve ``--attn_impl``; ``auto`` by the module's rule: sdpa, except plain on a CPU
    under bf16/fp16 autocast when its scores fit in ``MEMORY_SHARE`` of ``available`` bytes
    (and where they do not, the recomputing kernel for training)."""
    if requested in IMPLS:
        return AttnChoice(requested, requested, reason=f"--attn_impl {requested}")
    if requested != "auto":
        names = ", ".join(("auto",) + IMPLS)
        raise ValueError(f"--attn_impl must be one of {names}; got {requested!r}")
    kind = torch.device(device).type
    if kind != "cpu":
        return AttnChoice("sdpa", requested, reason=f"{kind}: SDPA's fused kernels")
    dname = str(dtype).replace("torch.", "")
    if dtype not in _REDUCED:
        return AttnChoice("sdpa", requested, reason=f"CPU, {dname}: the fused kernel")
    fits, figures = _plain_fits(plain_score_bytes(model, batch, dtype, train), available)
    if fits:
        return AttnChoice("plain", requested, reason=f"CPU, {dname}; {figures}")
    backward = train and model.depth > model.no_grad_prefix()  # recompute is SDPA otherwise
    lean = "recompute" if backward and recompute_supported() else "sdpa"
    return AttnChoice(lean, requested, reason=f"CPU, {dname}; {figures}: too big")


# -- the entry point -------------------------------------------------------------------------
def sample_shape(cfg: RunConfig, train: bool) -> tuple[int, int, int, int, int]:
    """(B, 3, T, H, W) of the run's batches, from the flags: a training step has
    ``batch_size * num_sample`` rows (each video gives ``num_sample`` augmented clips)."""
    batch = cfg.optim.batch_size * cfg.data.num_sample if train else cfg.optim.batch_size_val
    m = cfg.model
    return (batch, 3, m.num_frames, m.input_size, m.input_size)


ATTN_FILE = "attention.json"


def _stored_choice(run_dir: Path | None) -> str | None:
    """The kernel this run chose at its first start, if it was ``auto`` and recorded."""
    path = None if run_dir is None else Path(run_dir) / ATTN_FILE
    if path is None or not path.is_file():
        return None
    try:
        impl = json.loads(path.read_text()).get("attn_impl")
    except (OSError, ValueError, AttributeError):
        return None  # unreadable: decide again (and rewrite it)
    return impl if impl in IMPLS else None


def _store_choice(run_dir: Path, impl: str) -> None:
    path = Path(run_dir) / ATTN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"attn_impl": impl}) + "\n")
    os.replace(tmp, path)


def _resolve(
    model: VisionTransformer,
    cfg: RunConfig,
    device: torch.device,
    precision: Precision,
    train: bool,
    run_dir: Path | None,
) -> AttnChoice:
    """``--attn_impl`` for this run: an explicit flag, the kernel a first start recorded in
    ``run_dir``, or the ``auto`` rule (recorded there for a restart)."""
    requested = cfg.model.attn_impl
    if requested != "auto":  # the flag's kernel, or a one-line error for an unknown name
        return choose_attn_impl(model, requested, 0, torch.float32, train, None, device)
    stored = _stored_choice(run_dir)
    if stored is not None:
        return AttnChoice(stored, requested, reason=f"kept from {run_dir / ATTN_FILE}")
    dtype = precision.dtype or torch.float32
    # free memory matters to the CPU rule alone (and CUDA's query needs a GPU)
    memory = available_memory(device) if device.type == "cpu" else None
    batch = sample_shape(cfg, train)[0]
    choice = choose_attn_impl(model, requested, batch, dtype, train, memory, device)
    if run_dir is not None:
        _store_choice(run_dir, choice.impl)
    return choice


def prepare_model_for_speed(
    model: nn.Module,
    cfg: RunConfig,
    info: DistInfo,
    precision: Precision,
    train: bool = True,
    run_dir: Path | None = None,
) -> nn.Module:
    """Frozen-weight cast, attention choice (``--attn_impl``) and ``--compile``, in that order.

    Call once, after the model is built, on its device, with its checkpoint loaded and its
    trainable set marked, and before DDP, the optimiser and the EMA copy are made. Returns
    the model to train (the compiled wrapper with ``--compile``; ``unwrap`` gives the bare
    one). Under DDP rank 0 decides (free memory differs between ranks) and every rank takes
    its choice. With ``run_dir`` the ``auto`` choice is written to ``run_dir/attention.json``
    and a restart of the run reads it back instead of deciding again (the free memory may
    differ by then): the kernels agree only to rounding, so a resumed run must keep its
    kernel to end with the uninterrupted run's exact weights.
    """
    bare = unwrap(model)
    if precision.dtype is not None:
        cast = cast_frozen_weights(bare, precision.dtype)
        if cast and info.is_main:
            log.info("frozen weights stored in %s: %d tensors", precision.name, cast)
    auto = cfg.model.attn_impl == "auto"
    choice = None
    if info.is_main or not auto:
        choice = _resolve(bare, cfg, torch.device(info.device), precision, train, run_dir)
    if info.enabled and auto:
        choice = all_gather_objects(choice, info)[0]
    assert choice is not None
    bare.set_attn_impl(choice.impl)  # type: ignore[operator]
    if info.is_main:
        log.info(choice.log_line())
    if cfg.model.compile:
        model = torch.compile(model)
    return model


__all__ = [
    "AttnChoice",
    "available_memory",
    "cast_frozen_weights",
    "choose_attn_impl",
    "plain_score_bytes",
    "prepare_model_for_speed",
]
