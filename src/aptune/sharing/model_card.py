"""README.md of an adapter folder: a Hugging Face model card.

The YAML header is what the Hub indexes (``library_name``, ``base_model``, ``pipeline_tag``,
``tags``, ``datasets``, and the test metrics of ``metrics.json`` as a ``model-index``);
it is written with ``yaml.safe_dump`` so any class or dataset name stays valid YAML. The
body says what was trained, how to load it, and the parameter report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

#: method -> the tag a Hub search for it would use
METHOD_TAGS = {
    "prompt": "attention-prompt-tuning", "vpt_shallow": "visual-prompt-tuning",
    "vpt_deep": "visual-prompt-tuning", "adapter": "adaptformer", "lora": "lora",
    "bitfit": "bitfit", "linear": "linear-probe", "end2end": "full-fine-tuning",
    "random": "from-scratch",
}  # fmt: skip


def _metric_rows(metrics: dict | None) -> list[dict[str, Any]]:
    test = (metrics or {}).get("test") or {}
    rows = []
    for key, name in (("top1", "top-1 accuracy"), ("top5", "top-5 accuracy")):
        if isinstance(test.get(key), (int, float)):
            rows.append({"type": "accuracy", "name": name, "value": round(float(test[key]), 3)})
    return rows


def card_header(cfg: dict, metrics: dict | None, name: str, library: str = "aptune") -> dict:
    """The YAML header's values (``library`` is ``peft`` for a PEFT folder)."""
    dataset = cfg["run_config"].get("data_set", "")
    methods = [m["name"] for m in cfg["methods"]]
    tags = ["aptune", "video-classification", "videomae", "peft"]
    tags += [METHOD_TAGS[m] for m in methods if m in METHOD_TAGS]
    header: dict[str, Any] = {"library_name": library}
    base = cfg.get("base_model_name_or_path")
    if base and cfg.get("base_model_sha256") is None:
        header["base_model"] = base  # the Hub links only Hub ids; a local path stays below
    header.update(pipeline_tag="video-classification", tags=list(dict.fromkeys(tags)))
    if dataset:
        header["datasets"] = [dataset]
    rows = _metric_rows(metrics)
    if rows:
        header["metrics"] = ["accuracy"]
        header["model-index"] = [{
            "name": name,
            "results": [{
                "task": {"type": "video-classification", "name": "Video Classification"},
                "dataset": {"type": dataset or "custom", "name": dataset or "custom"},
                "metrics": rows,
            }],
        }]  # fmt: skip
    return header


def _base_line(cfg: dict) -> str:
    base = cfg.get("base_model_name_or_path")
    if not base:
        return (
            "No base model: the run trained from random initialisation, so this folder "
            "holds every tensor of the model."
        )
    if cfg.get("base_model_sha256") is None:
        rev = f" at revision `{cfg['revision']}`" if cfg.get("revision") else ""
        return f"Base model: the Hub model `{base}`{rev} (fetched through the Hub cache)."
    sums = ", ".join(f"`{k}` sha256 `{v}`" for k, v in cfg["base_model_sha256"].items())
    return (
        f"Base model: the local path `{base}` ({sums}); whoever loads this adapter "
        "needs the same weights there (or edits `base_model_name_or_path`)."
    )


def adapter_card(
    cfg: dict, metrics: dict | None, report: str, name: str, repo_id: str | None
) -> str:
    """README.md of the adapter folder whose adapter_config.json is ``cfg``; ``repo_id``
    (when pushed) is what its loading lines name."""
    name = repo_id or name or "aptune-adapter"
    header = yaml.safe_dump(card_header(cfg, metrics, name), sort_keys=False)
    methods = ", ".join(f"`{m['name']}` {m['options']}" for m in cfg["methods"])
    full = any(m["name"] in ("end2end", "random") for m in cfg["methods"])
    if full:
        what = "the whole model (full fine-tuning trains every tensor: the adapter is the model)"
    elif cfg["trainable_only"]:
        what = "only the tensors the run trained"
    else:
        what = "every tensor of the model (the run had no base model to share)"
    recipe = "\n".join(f"- `{k}`: {v}" for k, v in cfg.get("training", {}).items())
    test = (metrics or {}).get("test") or {}
    result = (
        f"Test: top-1 {test['top1']:.2f}%, top-5 {test.get('top5', float('nan')):.2f}% "
        f"over {test.get('num_videos')} videos x {test.get('views_per_video')} views."
        if "top1" in test
        else "No test metrics (the run has no metrics.json)."
    )
    where = repo_id or "PATH/TO/THIS/FOLDER"
    classes = cfg["classes"]
    shown = ", ".join(classes[:50]) + (
        f", ... ({len(classes)} in all)" if len(classes) > 50 else ""
    )
    s = cfg["sampling"]
    return f"""---
{header}---

# {name}

A `{cfg["model"]}` video classifier tuned with aptune (`--transfer_type {cfg["transfer_type"]}`,
peft_type `{cfg["peft_type"]}`). This folder holds {what}:
`adapter_model.safetensors`, with `adapter_config.json` saying how to rebuild the model.

{_base_line(cfg)}

## Recipe

Methods: {methods}

{recipe}

Checkpoint: `{cfg["checkpoint"]}`. {result}

## Input

Clips of {cfg["num_frames"]} frames at {cfg["input_size"]} px ({s["mode"]} sampling, frame
stride {s["sampling_rate"]}, short side {s["short_side_size"]}), RGB / 255 normalised with
mean {s["mean"]} and std {s["std"]}; a video is {cfg["test_views"]["segments"]} segments x
{cfg["test_views"]["crops"]} crops at test time, softmax averaged. Classes ({len(classes)}):
{shown}.

## Load

```python
import aptune

model = aptune.load_run("{where}")  # eval mode; model.class_names
```

```bash
aptune predict --run {where} video.mp4
aptune eval {where} --data_path LISTS --output results/
```

A Hub id (`ORG/NAME`, `ORG/NAME@REVISION`, `hf://ORG/NAME`) loads through the Hub cache,
offline once cached (`HF_HUB_OFFLINE=1`).

## Parameters

```
{report}
```
"""


def peft_card(
    peft: dict, metrics: dict | None, how: dict, name: str, mean_std: tuple[list, list]
) -> str:
    """README.md of a PEFT LoRA folder: loads with transformers + peft, no aptune needed.
    ``how``: the ``from_pretrained`` keywords that give the base the run's head and clips."""
    header: dict[str, Any] = {"library_name": "peft"}
    base = peft.get("base_model_name_or_path")
    if base and not Path(base).is_absolute():
        header["base_model"] = base
    header.update(pipeline_tag="video-classification", tags=["aptune", "lora", "videomae"])
    rows = _metric_rows(metrics)
    if rows:
        header["metrics"] = ["accuracy"]
    kwargs = ", ".join(f"{k}={v}" for k, v in how.items())
    rev = f', revision="{peft["revision"]}"' if peft.get("revision") else ""
    test = ", ".join(f"{r['name']} {r['value']}%" for r in rows) or "no test metrics"
    return f"""---
{yaml.safe_dump(header, sort_keys=False)}---

# {name or "aptune LoRA"} (PEFT)

A LoRA adapter (r={peft["r"]}, lora_alpha={peft["lora_alpha"]}, target_modules
{peft["target_modules"]}) for `transformers`' `VideoMAEForVideoClassification`, trained with
aptune; the classifier and `fc_norm` travel as `modules_to_save`. Test: {test}.

```python
from peft import PeftModel
from transformers import VideoMAEForVideoClassification

base = VideoMAEForVideoClassification.from_pretrained(
    "{base}"{rev}, {kwargs}, ignore_mismatched_sizes=True
)
model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER").eval()
logits = model(pixel_values=clips).logits  # clips: (batch, frames, 3, height, width)
```

Clips are RGB / 255 normalised with mean {mean_std[0]} and std {mean_std[1]}; the class
names are in `classes.txt`, one a line, in the order of the logits.
"""


__all__ = ["adapter_card", "card_header", "peft_card"]
