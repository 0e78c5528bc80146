"""FLOPs of ``aptune profile``, counted on meta tensors where possible (no memory, no time).

``torch.utils.flop_counter.FlopCounterMode`` does not know the CPU SDPA kernels, so the
standard SDPA formulas are registered for them. On the meta device a model of any size -
VideoMAE V2's 1-billion-parameter ViT-g included - is built, counted and sized in seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _sdpa_fwd(q, k, v, *args, out_shape=None, **kwargs) -> int:  # shapes, not tensors
    return sdpa_flop_count(q, k, v)


def _sdpa_bwd(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


def _flop_mapping() -> dict[Any, Callable[..., int]]:
    """SDPA's CPU kernels, which FlopCounterMode would count as zero."""
    aten, mapping = torch.ops.aten, {}
    for name, fn in (
        ("_scaled_dot_product_flash_attention_for_cpu", _sdpa_fwd),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _sdpa_bwd),
    ):
        if hasattr(aten, name):
            mapping[getattr(aten, name)] = fn
    return mapping


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of everything ``fn`` runs (forward, backward), multiply-add = 2 FLOPs."""
    with FlopCounterMode(display=False, custom_mapping=_flop_mapping()) as counter:
        fn()
    return counter.get_total_flops()


def count_inference_flops(model: torch.nn.Module, fn: Callable[[], object]) -> int:
    """``count_flops`` with every ``requires_grad`` off while it runs.

    FlopCounterMode's module tracker asserts on views of trainable parameters taken under
    ``no_grad`` (in this torch they still report ``requires_grad``); inference needs no
    grad flags, so they are switched off and restored.
    """
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        return count_flops(fn)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def flops_sweep(
    model_name: str,
    tokens: list[int],
    num_frames: int = 16,
    input_size: int = 224,
    num_classes: int = 174,
) -> list[dict]:
    """Forward GFLOPs per clip of APT and VPT-deep by prompt count (meta tensors, instant)."""
    import aptune

    def gflops(transfer_type: str, **options: Any) -> float:
        with torch.device("meta"):
            model = aptune.build_model(
                model_name, num_classes=num_classes, transfer_type=transfer_type,
                num_frames=num_frames, input_size=input_size, **options,
            ).eval()  # fmt: skip
            x = torch.empty(1, 3, num_frames, input_size, input_size)
            with torch.no_grad():
                return count_inference_flops(model, lambda: model(x)) / 1e9

    base = gflops("linear")
    rows = [{"tokens": 0, "prompt": base, "vpt_deep": base, "linear": base}]
    for n in tokens:
        apt, vpt = gflops("prompt", prompt_num_tokens=n), gflops("vpt_deep", vpt_num_tokens=n)
        rows.append({"tokens": n, "prompt": apt, "vpt_deep": vpt, "linear": base})
    return rows


def _size_one(
    model_name: str, method: str, num_frames: int, input_size: int, num_classes: int,
    options: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    import aptune

    with torch.device("meta"):
        model = aptune.build_model(
            model_name, num_classes=num_classes, transfer_type=method,
            num_frames=num_frames, input_size=input_size, **options,
        ).eval()  # fmt: skip
        x = torch.empty(1, 3, num_frames, input_size, input_size)
        y = torch.zeros(1, dtype=torch.long)
        with torch.no_grad():
            fwd = count_inference_flops(model, lambda: model(x))
        model.train()
        train = count_flops(lambda: F.cross_entropy(model(x), y).backward())
    report = aptune.parameter_report(model)
    return dict(
        method=method, trainable_params=report.trainable, backbone_params=report.backbone_total,
        trainable_pct=report.trainable_percent, fwd_gflops=fwd / 1e9, train_gflops=train / 1e9,
        ckpt_bytes=4 * report.trainable,
    )  # fmt: skip


def size_methods(
    model_name: str,
    methods: list[str],
    num_frames: int = 16,
    input_size: int = 224,
    num_classes: int = 174,
    method_options: dict[str, Any] | None = None,
) -> list[dict]:
    """``aptune profile --meta``: parameters and counted FLOPs per method, on meta tensors.

    The rows carry the keys of the measured rows that need no real tensors; the
    trainable checkpoint size is its fp32 tensor bytes (the safetensors header adds < 4 KB).
    """
    opts = method_options or {}
    rows = [_size_one(model_name, m, num_frames, input_size, num_classes, opts) for m in methods]
    base = next((r["fwd_gflops"] for r in rows if r["method"] == "linear"), None)
    for r in rows:
        r["fwd_vs_linear"] = r["fwd_gflops"] / base if base else None
    return rows


__all__ = ["count_flops", "count_inference_flops", "flops_sweep", "size_methods"]
