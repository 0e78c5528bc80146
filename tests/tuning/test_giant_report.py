"""Every named size builds on the meta device; the parameter report of VideoMAE V2's
ViT-g (1 billion parameters) with APT equals the closed-form count, with no real memory."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.models.vit import MODEL_SIZES

D, L, H, HIDDEN, PATCH, T = 1408, 40, 16, 6144, 14, 2  # vit_giant_patch14_224


def block_params(dim: int, hidden: int, heads: int, cos_attn: bool) -> int:
    """norm1, qkv (no bias), q_bias, v_bias, proj, norm2, fc1, fc2 (+ per-head scale)."""
    return 4 * dim * dim + 2 * dim * hidden + 8 * dim + hidden + (heads if cos_attn else 0)


@pytest.mark.parametrize("name", list(MODEL_SIZES))
def test_every_named_model_builds_and_runs_on_meta(name: str) -> None:
    with torch.device("meta"):
        model = aptune.build_model(name, num_classes=400, transfer_type="prompt", cos_attn=True)
        with torch.no_grad():
            out = model.eval()(torch.empty(1, 3, 16, 224, 224))
    assert out.shape == (1, 400) and out.is_meta
    assert all(p.is_meta for p in model.parameters())


@pytest.mark.parametrize("cos_attn", [False, True])
@pytest.mark.parametrize("tokens, start, reparam", [(2, 0, False), (400, 10, True)])
def test_giant_shapes_and_closed_form_counts_with_apt(cos_attn, tokens, start, reparam) -> None:
    with torch.device("meta"):
        model = aptune.build_model(
            "vit_giant_patch14_224", num_classes=710, prompt_num_tokens=tokens,
            prompt_start=start, prompt_reparam=reparam, cos_attn=cos_attn,
        )  # fmt: skip
    sd = model.state_dict()
    assert sd["patch_embed.proj.weight"].shape == (D, 3, T, PATCH, PATCH)
    assert model.patch_embed.grid == (8, 16, 16) and model.pos_embed.shape == (1, 2048, D)
    assert (
        sd["blocks.39.mlp.fc1.weight"].shape == (HIDDEN, D) and "blocks.40.norm1.weight" not in sd
    )
    assert sd["blocks.0.attn.qkv.weight"].shape == (3 * D, D) and model.head_dim == 88
    assert ("blocks.0.attn.scale" in sd) == cos_attn
    layers = L - start
    prompts = 2 * layers * tokens * (D // H) + (2 * layers * tokens if reparam else 0)
    head = 2 * D + D * 710 + 710
    backbone = (3 * T * PATCH * PATCH + 1) * D + L * block_params(D, HIDDEN, H, cos_attn)
    report = aptune.parameter_report(model)
    assert report.groups["backbone"] == (0, backbone)
    assert report.groups["apt prompts"] == (prompts, prompts)
    assert report.groups["head (fc_norm + head)"] == (head, head)
    assert (report.trainable, report.total) == (prompts + head, backbone + prompts + head)
    assert 1.01e9 < backbone < 1.02e9  # "ViT-g, 1B parameters"


def test_giant_refuses_an_input_size_its_patch_does_not_divide() -> None:
    """160 px is fine for patch 16 but would silently drop 6 px per side with patch 14."""
    with torch.device("meta"), pytest.raises(ValueError, match="patch size 14"):
        aptune.build_model("vit_giant_patch14_224", num_classes=10, input_size=160)
    with torch.device("meta"):
        assert aptune.build_model("vit_giant", input_size=168).patch_embed.grid == (8, 12, 12)
