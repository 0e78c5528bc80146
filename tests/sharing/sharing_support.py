"""Finished runs for the sharing tests, laid out as ``aptune train`` leaves them.

A tiny transformers VideoMAE (2 layers, width 64, 4 frames at 32 px) saved with
``save_pretrained`` is the base; each run builds its method on it with the run's own
``RunConfig`` (``engine.builders.build_run_model``, as training does), moves every trainable
tensor off its initial value (so a LoRA B or a prompt that did not load would show), and
writes config.yaml, classes.txt, metrics.json and a verified checkpoint-best with
``engine.checkpoint.save_best``. Seconds, where training each method would take minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aptune.config import RunConfig, save_config
from aptune.engine.builders import build_run_model, saves_full_weights
from aptune.engine.checkpoint import save_best
from aptune.engine.distributed import DistInfo

transformers = pytest.importorskip("transformers")

CLASSES = ["left", "right", "up", "down"]
HF_SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
    num_frames=4, image_size=32, tubelet_size=2, num_labels=4, use_mean_pooling=True,
)  # fmt: skip
#: the methods of the issue: transfer_type and its flags
METHODS = {
    "apt": ("prompt", {"prompt_num_tokens": 3}),
    "vpt": ("vpt_deep", {}),
    "adaptformer": ("adapter", {}),
    "lora": ("lora", {"lora_rank": 4, "lora_alpha": 8.0, "lora_targets": "all"}),
    "bitfit": ("bitfit", {}),
    "linear": ("linear", {}),
    "full": ("end2end", {}),
}
METRICS = {
    "test": {"top1": 75.0, "top5": 100.0, "num_videos": 8, "views_per_video": 1},
    "best_val": {"top1": 70.0, "top5": 100.0, "epoch": 0},
}


def hf_videomae(seed: int = 0) -> torch.nn.Module:
    """A transformers VideoMAE classifier with every tensor random (biases included)."""
    torch.manual_seed(seed)
    model = transformers.VideoMAEForVideoClassification(transformers.VideoMAEConfig(**HF_SMALL))
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}
    model.load_state_dict(sd)
    return model.eval()


def make_run(out: Path, transfer_type: str, finetune: str, seed: int = 1, **flags) -> Path:
    """A finished run folder of ``transfer_type`` on ``finetune`` (see the module docstring)."""
    values = dict(
        model="vit_nano_patch16_224", nb_classes=len(CLASSES), num_frames=4, input_size=32,
        transfer_type=transfer_type, finetune=finetune, attn_impl="sdpa", data_set="SSV2",
        test_num_segment=2, test_num_crop=1, output_dir=str(out),
    )  # fmt: skip
    values.update(flags)
    cfg = RunConfig.from_values(values)
    torch.manual_seed(seed)
    model = build_run_model(cfg, DistInfo())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)
    (out / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    (out / "metrics.json").write_text(json.dumps(METRICS))
    full = saves_full_weights(model, cfg)
    save_best(out, 0, model, config=cfg.to_dict(), extra={"best": METRICS["best_val"]},
              trainable_only=not full)  # fmt: skip
    return out


def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


#: a batch of the runs' clip size (B, 3, T, H, W)
X = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))
