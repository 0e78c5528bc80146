"""``aptune profile`` and ``aptune info`` know the V-JEPA 2 sizes; every one builds on meta."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.cli.profile import main
from aptune.commands.profile import profile_methods, size_methods

VITL_PARAMS = 303_885_312  # Meta's ViT-L encoder


def test_vitl_sized_on_meta_with_its_encoder_count(tmp_path):
    rows = size_methods("vjepa2_vit_large_patch16_256", ["linear", "prompt"], 4, 64, 174,
                        {"prompt_num_tokens": 2})  # fmt: skip
    by = {r["method"]: r for r in rows}
    assert by["linear"]["backbone_params"] == VITL_PARAMS
    assert by["prompt"]["trainable_params"] - by["linear"]["trainable_params"] == 24 * 2 * 2 * 64
    assert by["prompt"]["fwd_gflops"] > by["linear"]["fwd_gflops"] > 0
    argv = ["--meta", "--model", "vjepa2_vit_large_patch16_256", "--num_frames", "4",
            "--input_size", "64", "--methods", "linear", "--token_sweep", "", "--out",
            str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    md = (tmp_path / "profile.md").read_text()
    assert "| linear | " in md and "the attentive `pooler` + `head`" in md


@pytest.mark.parametrize(
    "name",
    ["vjepa2_vit_large_patch16_256", "vjepa2_vit_huge_patch16_256",
     "vjepa2_vit_giant_patch16_256", "vjepa2_vit_giant_patch16_384"],
)  # fmt: skip
def test_every_size_builds_on_the_meta_device(name):
    with torch.device("meta"):
        model = aptune.build_model(name, num_classes=10, transfer_type="prompt+lora",
                                   head="linear")  # fmt: skip
    assert next(model.parameters()).device.type == "meta"
    assert aptune.parameter_report(model).groups["backbone"][0] == 0


def test_measured_rows_for_a_tiny_vjepa2():
    rows = profile_methods("vjepa2_vit_nano_patch16_256", ["linear", "prompt"], 4, 32, 1, 4,
                           {"prompt_num_tokens": 2}, repeats=1, isolate=False)  # fmt: skip
    assert [r["method"] for r in rows] == ["linear", "prompt"]
    assert all(r["infer_s_per_clip"] > 0 and r["train_s_per_clip"] > 0 for r in rows)
