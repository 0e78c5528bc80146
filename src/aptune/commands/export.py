"""``aptune export RUN --format onnx|torchscript --out PATH``: a run as one deployable file
(``--format adapter|peft``: a folder sharing what the run trained, ``commands/share.py``).

The exported graph is the run's whole model (backbone, the method's prompts / adapters /
LoRA, head) with a dynamic batch axis: normalised clips ``(B, 3, T, S, S)`` -> logits
``(B, classes)``. ``PATH.json`` beside it says how to make those clips. After writing, the
file is run (onnxruntime, or ``torch.jit.load``) on a random batch of another size and
compared with PyTorch; a maximum relative error above ``TOLERANCE`` fails the export.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import torch

from aptune.data.sampling import sampling_mode
from aptune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aptune.engine.trained import TrainedRun, open_run

log = logging.getLogger("aptune")
TOLERANCE = 1e-4
#: one deployable file each; ``adapter`` and ``peft`` are folders that share what the run
#: trained (``commands/share.py``)
FORMATS = ("onnx", "torchscript", "adapter", "peft")


class ExportError(RuntimeError):
    """The export could not be written or does not reproduce PyTorch's output."""


def require_export_extra() -> None:
    """onnx, onnxruntime and onnxscript, or one line saying how to get them."""
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(name)
        except ImportError:
            raise ExportError(
                f"--format onnx needs the '{name}' package: pip install aptune[export]"
            ) from None


def example_input(trained: TrainedRun, batch: int, seed: int = 0) -> torch.Tensor:
    """A random normalised batch (B, 3, T, S, S) of the run's clip size."""
    m = trained.config.model
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, m.num_frames, m.input_size, m.input_size, generator=gen)


def relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref|: one number that reads the same for any logit scale."""
    return float((got.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12))


def export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """torch.export-based exporter (the default since PyTorch 2.9); the TorchScript-based
    one is the fallback for graphs it cannot capture. Weights go inside the file unless
    they pass protobuf's 2 GB limit (then beside it, ``PATH.data``)."""
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > 1_500_000_000
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(
                model,
                (x,),
                str(path),
                dynamo=True,
                input_names=["clips"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                optimize=True,
                external_data=big,
            )
        return
    except Exception as exc:  # noqa: BLE001 - every exporter failure has the same fallback
        log.info(
            "torch.export-based ONNX export failed (%s); using the TorchScript-based exporter",
            " ".join(str(exc).split())[:200],
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (x,),
            str(path),
            dynamo=False,
            input_names=["clips"],
            output_names=["logits"],
            opset_version=17,
            dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}},
        )


def check_onnx(path: Path, model: torch.nn.Module, x: torch.Tensor) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        ref = model(x)
    return relative_error(torch.from_numpy(got), ref)


def export_torchscript(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # trace/jit deprecation notices and tracer warnings
        traced = torch.jit.trace(model, x, check_trace=False)
        traced.save(str(path))


def check_torchscript(path: Path, model: torch.nn.Module, x: torch.Tensor) -> float:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
        return relative_error(loaded(x), model(x))


def sidecar(trained: TrainedRun, fmt: str, run: Path, max_rel_error: float) -> dict:
    """What a user needs to feed the exported model (written as PATH.json)."""
    c = trained.config
    return {
        "format": fmt,
        "input": {
            "name": "clips",
            "shape": ["batch", 3, c.model.num_frames, c.model.input_size, c.model.input_size],
            "dtype": "float32",
            "layout": "(batch, channels RGB, frames, height, width)",
        },
        "output": {
            "name": "logits",
            "shape": ["batch", c.data.nb_classes],
            "note": "softmax over the last axis gives class probabilities",
        },
        "num_frames": c.model.num_frames,
        "sampling_rate": c.data.sampling_rate,
        "sampling": sampling_mode(c.data.data_set, c.data.sampling),
        "input_size": c.model.input_size,
        "short_side_size": max(c.data.short_side_size, c.model.input_size),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "pixel_scale": "pixels / 255, then (x - mean) / std per channel",
        "test_views": {
            "segments": c.data.test_num_segment,
            "crops": c.data.test_num_crop,
            "merge": "mean of the views' softmax",
        },
        "class_names": trained.class_names,
        "model": c.model.model,
        "transfer_type": c.model.transfer_type,
        "run": str(run),
        "checkpoint": trained.which,
        "check": {"max_relative_error": max_rel_error, "tolerance": TOLERANCE},
    }


def export_run(run: Path, fmt: str, out: Path, which: str = "best") -> float | None:
    """Write ``out`` and ``out.json``; -> the checked maximum relative error. ``adapter``
    and ``peft`` write the folder ``out`` instead (-> its checked max logit difference)."""
    if fmt not in FORMATS:
        raise ExportError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if fmt in ("adapter", "peft"):
        from aptune.commands.share import export_shared

        return export_shared(run, fmt, out, which)
    if fmt == "onnx":
        require_export_extra()
    trained = open_run(run, which, device="cpu")
    model = trained.model.float().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    x = example_input(trained, 2)
    check_x = example_input(trained, 3, seed=1)  # another batch size: the axis is dynamic
    if fmt == "onnx":
        export_onnx(model, x, out)
        err = check_onnx(out, model, check_x)
    else:
        export_torchscript(model, x, out)
        err = check_torchscript(out, model, check_x)
    if not err <= TOLERANCE:
        raise ExportError(
            f"{out}: {fmt} output differs from PyTorch by a relative "
            f"{err:.2e} > {TOLERANCE:.0e}; the export is not faithful"
        )
    json_path = out.with_name(out.name + ".json")
    json_path.write_text(json.dumps(sidecar(trained, fmt, run, err), indent=2))
    return err
