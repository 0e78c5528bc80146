"""An adapter folder: what a run trained, beside the name of the backbone it needs.

    adapter_model.safetensors   the trained tensors only, named as in aptune's state dict
                                (every tensor for full fine-tuning or a run without a base)
    adapter_config.json         shaped like PEFT's: peft_type, base_model_name_or_path,
                                revision / sha256 of the base, the methods and their options,
                                classes, clip size, sampling, test views, the run's options
    README.md                   a Hub model card (model_card.py)
    classes.txt                 one class name a line

The folder is written under a temporary name beside ``out`` and renamed into place, so a
reader never sees half of it; an existing adapter folder at ``out`` is replaced.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from aptune.config import DataOptions, RunConfig
from aptune.data.sampling import sampling_mode
from aptune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aptune.sharing.errors import SharingError
from aptune.sharing.model_card import adapter_card
from aptune.tuning import MethodConfig, ParameterReport

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT_VERSION = 1
#: aptune method -> the adapter's ``peft_type`` (PEFT's spelling: upper case)
PEFT_TYPES = {
    "prompt": "APT", "vpt_shallow": "VPT_SHALLOW", "vpt_deep": "VPT_DEEP",
    "adapter": "ADAPTFORMER", "lora": "LORA", "bitfit": "BITFIT", "linear": "LINEAR_PROBE",
    "end2end": "FULL", "random": "FULL",
}  # fmt: skip
#: data options that are paths or loader settings of one machine: not part of an adapter
_LOCAL_DATA = (
    "data_path",
    "eval_data_path",
    "data_root",
    "decode_cache",
    "num_workers",
    "pin_mem",
    "aug_device",
    "decoder",
    "strict_data",
    "eval_skip_unreadable",
)

#: the training flags adapter_config.json and the card's recipe list
RECIPE_KEYS = ("epochs", "batch_size", "update_freq", "opt", "lr", "min_lr", "warmup_epochs",
               "weight_decay", "layer_decay", "smoothing", "mixup", "cutmix", "precision",
               "recipe")  # fmt: skip


@dataclass
class AdapterContent:
    """Everything an adapter folder says, gathered from a finished run."""

    config: RunConfig
    methods: list[MethodConfig]
    tensors: dict[str, torch.Tensor]
    trainable_only: bool
    class_names: list[str]
    report: ParameterReport
    checkpoint: str  # best | last
    metrics: dict | None = None
    run_name: str = ""


def aptune_version() -> str:
    try:
        return metadata.version("aptune")
    except metadata.PackageNotFoundError:  # a source tree on PYTHONPATH
        return "unknown"


def rebuild_options(cfg: RunConfig) -> dict[str, Any]:
    """The run's flags that rebuild its model and its clips (``RunConfig.from_values``
    takes them back): the model section without the base, the methods, the data section
    without paths and loader settings. The base is recorded apart (``base_source``); a
    V-JEPA 2 probe file (``head_checkpoint``) is not needed: the head is in the adapter."""
    model = dataclasses.asdict(cfg.model)
    values = {k: v for k, v in model.items() if k not in ("finetune", "head_checkpoint")}
    data = dataclasses.asdict(cfg.data)
    values.update({k: v for k, v in data.items() if k not in _LOCAL_DATA})
    values.update(cfg.method_options())
    return values


def _method_record(cfg: MethodConfig) -> dict[str, Any]:
    return {"name": cfg.name, "options": dataclasses.asdict(cfg)}


def adapter_config(content: AdapterContent, base: dict) -> dict[str, Any]:
    """adapter_config.json: PEFT's field names where PEFT has one, aptune's for the rest."""
    c = content.config
    names = [m.name for m in content.methods]
    d: DataOptions = c.data
    return {
        "peft_type": "+".join(PEFT_TYPES.get(n, n.upper()) for n in names),
        "task_type": "VIDEO_CLASSIFICATION",
        **base,
        "inference_mode": True,
        "library_name": "aptune",
        "aptune_version": aptune_version(),
        "format_version": FORMAT_VERSION,
        "transfer_type": c.model.transfer_type,
        "methods": [_method_record(m) for m in content.methods],
        "trainable_only": content.trainable_only,
        "model": c.model.model,
        "num_classes": d.nb_classes,
        "classes": content.class_names,
        "num_frames": c.model.num_frames,
        "input_size": c.model.input_size,
        "tubelet_size": c.model.tubelet_size,
        "sampling": {
            "mode": sampling_mode(d.data_set, d.sampling),
            "sampling_rate": d.sampling_rate,
            "short_side_size": max(d.short_side_size, c.model.input_size),
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "test_views": {"segments": d.test_num_segment, "crops": d.test_num_crop},
        "checkpoint": content.checkpoint,
        "parameters": content.report.as_dict(),
        "training": {k: v for k, v in c.to_dict().items() if k in RECIPE_KEYS},
        "run_config": rebuild_options(c),
    }


def _check_out(out: Path) -> None:
    """Replace only what is ours: an empty folder or an earlier adapter folder."""
    if out.exists() and not out.is_dir():
        raise SharingError(f"--out {out}: a file is there; give a folder for the adapter")
    if out.is_dir() and any(out.iterdir()) and not (out / ADAPTER_CONFIG).is_file():
        raise SharingError(
            f"--out {out}: the folder holds other files (no {ADAPTER_CONFIG}); give a new or "
            "empty folder"
        )


def write_folder(
    out: Path,
    files: dict[str, str],
    tensors: dict[str, torch.Tensor],
    tensor_meta: dict[str, str],
    weights_name: str = ADAPTER_WEIGHTS,
) -> Path:
    """Write text ``files`` and the tensors into a temporary sibling, then rename it to
    ``out`` (an earlier folder there is moved aside first and removed after)."""
    out = Path(out)
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the folder from its group
        plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(plain, str(tmp / weights_name), metadata=tensor_meta)
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_adapter(
    out: Path, content: AdapterContent, base: dict, repo_id: str | None = None
) -> Path:
    """The adapter folder of ``content`` at ``out``; ``base`` from ``describe_base``;
    ``repo_id``: the Hub repository the card's loading lines name (``aptune push``)."""
    cfg = adapter_config(content, base)
    report = str(content.report)
    files = {
        ADAPTER_CONFIG: json.dumps(cfg, indent=2) + "\n",
        "README.md": adapter_card(cfg, content.metrics, report, content.run_name, repo_id),
        "classes.txt": "\n".join(content.class_names) + "\n",
    }
    meta = {"format": "aptune", "trainable_only": str(content.trainable_only).lower()}
    return write_folder(out, files, content.tensors, meta)


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_TYPES",
    "AdapterContent",
    "adapter_config",
    "rebuild_options",
    "write_adapter",
    "write_folder",
]
