"""V-JEPA 2 against transformers' ``VJEPA2`` (a numerical reference in tests only): encoder
tokens and classifier logits from ``save_pretrained`` folders loaded by ``build_model``."""

from __future__ import annotations

import pytest
import torch

import aptune

transformers = pytest.importorskip("transformers")

NANO = "vjepa2_vit_nano_patch16_256"
FRAMES, SIZE = 4, 32  # grid (2, 2, 2): 8 tokens
X = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))

# -- parity with transformers' VJEPA2 ---------------------------------------------------
def hf_folder(tmp_path, cls_name: str, crop: int, num_labels=5, std=0.02, **size):
    """A transformers V-JEPA 2 (random values everywhere: norms and biases too) saved with
    ``save_pretrained``; returns (folder, model in eval mode)."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VJEPA2Config(
        crop_size=crop, frames_per_clip=FRAMES, num_labels=num_labels, pred_hidden_size=32,
        pred_num_hidden_layers=1, pred_num_attention_heads=2, **size,
    )  # fmt: skip
    with torch.device("meta"):  # skip transformers' init; every value is set below
        hf = getattr(transformers, cls_name)(cfg)
    hf = hf.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in hf.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, std, generator=g)
            else:  # LayerNorm weights near 1, biases and norm shifts near 0
                p.normal_(1.0 if n.endswith("weight") else 0.0, 0.02, generator=g)
    folder = tmp_path / cls_name
    hf.save_pretrained(folder)
    return folder, hf


#: std 0.1 for the tiny matrices: attention far from uniform, so positions matter
TINY_HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, std=0.1)


def _hf_tokens(hf, x):
    enc = hf.vjepa2 if hasattr(hf, "vjepa2") else hf
    return enc(x.transpose(1, 2), skip_predictor=True).last_hidden_state  # HF: (B, T, C, H, W)


def test_parity_tiny_classifier(tmp_path, capsys):
    folder, hf = hf_folder(tmp_path, "VJEPA2ForVideoClassification", SIZE, **TINY_HF)
    m = aptune.build_model(
        NANO, checkpoint=folder, num_frames=FRAMES, input_size=SIZE, transfer_type="linear",
        num_classes=5,
    ).eval()  # fmt: skip
    assert m.pooler is not None and m.pooler.num_heads == 2  # transformers: encoder's heads
    with torch.no_grad():
        tokens, ref_tokens = m.forward_tokens(X), _hf_tokens(hf, X)
        logits, ref_logits = m(X), hf(X.transpose(1, 2)).logits
    dt = (tokens - ref_tokens).abs().max().item()
    dl = (logits - ref_logits).abs().max().item()
    with capsys.disabled():
        top = ref_logits.abs().max()
        print(f"\ntiny parity: tokens {dt:.2e}, logits {dl:.2e} (max |logit| {top:.3f})")
    assert tokens.shape == (2, 8, 64) and dt < 1e-4
    assert logits.shape == (2, 5) and dl < 1e-4
    assert ref_logits.abs().max() > 1e-2  # the comparison is not between near-zero logits


def test_parity_tiny_encoder_folder(tmp_path):
    folder, hf = hf_folder(tmp_path, "VJEPA2Model", SIZE, **TINY_HF)
    m = aptune.build_model(
        NANO, checkpoint=folder, num_frames=FRAMES, input_size=SIZE, transfer_type="lora",
        num_classes=3,
    ).eval()  # fmt: skip
    with torch.no_grad():
        torch.testing.assert_close(m.forward_tokens(X), _hf_tokens(hf, X), atol=1e-4, rtol=0)
        assert m(X).shape == (2, 3)


def test_positions_follow_the_input_not_the_configs_crop(tmp_path):
    """Built from a crop-32 folder and fed 64 px, aptune matches transformers with
    crop_size 64 (its positions are the input's), not transformers with crop_size 32."""
    transformers = pytest.importorskip("transformers")
    folder, hf32 = hf_folder(tmp_path, "VJEPA2Model", SIZE, **TINY_HF)
    hf64 = transformers.VJEPA2Model.from_pretrained(folder, crop_size=64).eval()
    m = aptune.build_model(
        NANO, checkpoint=folder, num_frames=FRAMES, transfer_type="linear"
    ).eval()
    x = torch.randn(1, 3, FRAMES, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        torch.testing.assert_close(tokens, _hf_tokens(hf64, x), atol=1e-4, rtol=0)
        assert (tokens - _hf_tokens(hf32, x)).abs().max() > 1e-2


@pytest.mark.slow
def test_parity_vit_large(tmp_path, capsys):
    """The ViT-L config (1024 / 24 / 16, MLP 4096) at 4 frames x 64 px, batch 1."""
    folder, hf = hf_folder(tmp_path, "VJEPA2ForVideoClassification", 64, num_labels=7)
    assert hf.config.hidden_size == 1024 and hf.config.num_hidden_layers == 24
    m = aptune.build_model(
        "vjepa2_vit_large_patch16_256", checkpoint=folder, num_frames=FRAMES, input_size=64,
        transfer_type="linear", num_classes=7,
    ).eval()  # fmt: skip
    x = torch.randn(1, 3, FRAMES, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens, ref_tokens = m.forward_tokens(x), _hf_tokens(hf, x)
        logits, ref_logits = m(x), hf(x.transpose(1, 2)).logits
    dt = (tokens - ref_tokens).abs().max().item()
    dl = (logits - ref_logits).abs().max().item()
    with capsys.disabled():
        top = ref_logits.abs().max()
        print(f"\nViT-L parity: tokens {dt:.2e}, logits {dl:.2e} (max |logit| {top:.3f})")
    assert tokens.shape == (1, 32, 1024) and dt < 1e-4
    assert logits.shape == (1, 7) and dl < 1e-4
