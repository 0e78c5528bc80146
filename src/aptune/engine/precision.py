"""The arithmetic a run computes in, chosen for the card it runs on.

``--precision auto`` means:

* a GPU with native bf16 (compute capability 8.0 and up: A100, H100, L4, RTX 30xx/40xx):
  bf16 autocast. bf16 has fp32's exponent range, so no loss scaler is needed;
* an older GPU (V100 7.0, T4 7.5, ...): fp16 autocast with a dynamic loss scaler. These
  cards have fp16 tensor cores but run bf16 only emulated, several times slower;
* a CPU: fp32 (``--bf16`` asks for bf16 autocast, fast on CPUs with AVX512-BF16 / AMX).

fp32 on a GPU lets matmuls and convolutions use TF32 (10-bit mantissa inputs, fp32
accumulation): on 8.0+ cards that is what makes fp32 training affordable at all, and
without it a "full precision" run is several times slower for no accuracy anyone has
measured. ``--bf16`` on a card without native bf16 is an error rather than a silent
emulation. The same rule serves training, evaluation, ``predict``, ``extract`` and
timelines (:func:`inference_precision`). ``--enable_deepspeed`` keeps the reference's
DeepSpeed recipe instead: fp16 with its loss scale on every card (:func:`run_precision`,
:func:`build_scaler`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from aptune.config import ConfigError, RunConfig

#: the first compute capability with bf16 tensor cores (Ampere)
NATIVE_BF16 = (8, 0)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass
class Precision:
    """Autocast settings; ``name`` is what the log says runs."""

    name: str = "fp32"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)


def capability(device: torch.device) -> tuple[int, int]:
    """The CUDA compute capability of ``device`` (its index, or the current GPU)."""
    major, minor = torch.cuda.get_device_capability(device)
    return int(major), int(minor)


def has_native_bf16(device: torch.device) -> bool:
    """Whether the GPU computes bf16 in hardware (not emulated through fp32)."""
    return capability(device) >= NATIVE_BF16


def _card(device: torch.device) -> str:
    """``NAME (compute capability X.Y)`` for messages."""
    major, minor = capability(device)
    try:
        name = torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):  # a query that needs a live GPU
        name = str(device)
    return f"{name} (compute capability {major}.{minor})"


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """``--precision`` (``auto``, ``fp32``, ``bf16``, ``fp16``) for ``device``.

    Side effect: fp32 on a GPU turns on TF32 matmuls and convolutions for the process
    (see the module docstring). Errors are one line naming the flag.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"--precision {requested!r}: choose one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if requested == "auto":
            requested = "bf16" if has_native_bf16(device) else "fp16"
        elif requested == "bf16" and not has_native_bf16(device):
            raise ConfigError(
                f"--bf16 / --precision bf16: {_card(device)} has no native bf16 (needs "
                f"{NATIVE_BF16[0]}.{NATIVE_BF16[1]}+); use --precision auto (fp16 with a loss "
                "scaler) or fp32"
            )
        if requested == "fp32":
            allow_tf32()
        return Precision(requested, device.type)
    if requested == "auto":
        requested = "fp32"
    if requested == "fp16":
        raise ConfigError("--precision fp16 needs a CUDA device; on CPU use --precision bf16")
    return Precision(requested, device.type)


def allow_tf32() -> None:
    """fp32 matmuls and cuDNN convolutions may use TF32 tensor cores."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def inference_precision(device: torch.device, bf16: bool = False) -> Precision:
    """What ``predict``, ``extract`` and timelines run in: ``--precision auto``'s choice
    for the card (bf16 / fp16 / fp32), or bf16 when asked (``--bf16``; an error on a GPU
    without native bf16)."""
    return resolve_precision("bf16" if bf16 else "auto", device)


def run_precision(cfg: RunConfig, device: torch.device) -> Precision:
    """``--precision`` for the card (:func:`resolve_precision`: auto is bf16 on 8.0+
    GPUs, fp16 + loss scaler on older ones, fp32 on CPU), except that
    ``--enable_deepspeed`` with ``auto`` on a GPU trains in fp16 as the reference's
    DeepSpeed config does, whatever the card."""
    if cfg.job.enable_deepspeed and cfg.optim.precision == "auto" and device.type == "cuda":
        return resolve_precision("fp16", device)
    return resolve_precision(cfg.optim.precision, device)


def build_scaler(precision: Precision, deepspeed: bool) -> torch.amp.GradScaler | None:
    """fp16's loss scaler; under ``--enable_deepspeed`` the reference's dynamic scale:
    2^7 at the start, doubled after 128 steps without an overflow."""
    if precision.name != "fp16":
        return None
    if deepspeed:
        return torch.amp.GradScaler("cuda", init_scale=2.0**7, growth_interval=128)
    return torch.amp.GradScaler("cuda")


__all__ = [
    "NATIVE_BF16",
    "Precision",
    "allow_tf32",
    "build_scaler",
    "has_native_bf16",
    "inference_precision",
    "resolve_precision",
    "run_precision",
]
