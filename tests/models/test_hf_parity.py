"""Our model loaded from Hugging Face VideoMAE folders equals transformers' own outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from aptune.models.checkpoint_io import CheckpointError, is_hf_folder, read_checkpoint
from aptune.models.convert import convert_state_dict, load_pretrained
from aptune.models.hf_config import read_hf_config
from aptune.models.vit import VisionTransformer

transformers = pytest.importorskip("transformers")

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=256,
    num_frames=4,
    image_size=32,
    tubelet_size=2,
    decoder_hidden_size=32,
    decoder_num_hidden_layers=1,
    decoder_num_attention_heads=2,
    decoder_intermediate_size=64,
)


def _random_hf(cls: type, seed: int, **cfg: object) -> torch.nn.Module:
    """A transformers model with random values in every tensor (norms and biases too)."""
    torch.manual_seed(seed)
    model = cls(transformers.VideoMAEConfig(**{**SMALL, **cfg})).eval()
    g = torch.Generator().manual_seed(seed)
    model.load_state_dict(
        {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in model.state_dict().items()}
    )
    return model


def _video(seed: int = 0) -> torch.Tensor:
    return torch.randn(
        2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed)
    )  # (B,C,T,H,W)


@pytest.fixture(scope="module")
def hf_classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, dict]:
    """VideoMAEForVideoClassification, 5 labels, saved as safetensors and as pytorch_model.bin."""
    hf = _random_hf(transformers.VideoMAEForVideoClassification, 0, num_labels=5)
    hf.config.id2label = {i: f"class_{i}" for i in range(5)}
    hf.config.label2id = {v: k for k, v in hf.config.id2label.items()}
    root = tmp_path_factory.mktemp("hf")
    folders = {"safetensors": root / "st", "bin": root / "bin"}
    hf.save_pretrained(folders["safetensors"])
    hf.save_pretrained(folders["bin"], safe_serialization=False)  # transformers 4.x
    if not (folders["bin"] / "pytorch_model.bin").is_file():
        # transformers 5 always writes safetensors; write what 4.x wrote: the same tensors
        # under the same names, pickled by torch.save
        from safetensors.torch import load_file

        sd = load_file(folders["bin"] / "model.safetensors")
        torch.save(sd, folders["bin"] / "pytorch_model.bin")
        (folders["bin"] / "model.safetensors").unlink()
    return hf, folders


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_classifier_logits_equal_transformers(hf_classifier, kind: str) -> None:
    hf, folders = hf_classifier
    assert is_hf_folder(folders[kind])
    cfg = read_hf_config(folders[kind])
    assert cfg.pop("class_names") == [f"class_{i}" for i in range(5)]
    assert (cfg["num_classes"], cfg["norm_eps"], cfg["mlp_ratio"]) == (5, 1e-12, 4.0)
    model = VisionTransformer(**cfg).eval()
    report = load_pretrained(model, folders[kind])
    assert (report.format, report.missing, report.head_reset) == ("hf", [], False)
    x = _video(1)
    with torch.no_grad():
        expected = hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)
        torch.testing.assert_close(model(x), expected)
        model.set_attn_impl("plain")
        torch.testing.assert_close(model(x), expected)


def test_build_model_from_hf_folder(hf_classifier) -> None:
    import aptune

    hf, folders = hf_classifier
    model = aptune.build_model(
        "vit_base_patch16_224",
        num_classes=5,
        transfer_type="linear",
        checkpoint=folders["safetensors"],
    ).eval()
    assert model.embed_dim == 64 and model.depth == 2  # architecture from config.json
    x = _video(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits)


def test_pretraining_folder_drops_decoder(tmp_path: Path) -> None:
    """Hub ``videomae-base`` style: VideoMAEForPreTraining, first-token-style final norm."""
    hf = _random_hf(transformers.VideoMAEForPreTraining, 3, use_mean_pooling=False)
    hf.save_pretrained(tmp_path)
    cfg = read_hf_config(tmp_path)
    assert cfg["num_classes"] == 0 and "class_names" not in cfg
    model = VisionTransformer(**{**cfg, "num_classes": 5}).eval()
    report = load_pretrained(model, tmp_path)
    assert report.format == "hf-pretrain" and report.head_reset
    assert report.missing == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    raw = hf.state_dict()
    in_file = read_checkpoint(tmp_path)[0]  # names as stored (q_bias, not query.bias)
    assert sorted(report.dropped) == sorted(
        k
        for k in in_file
        if k.startswith(("decoder.", "encoder_to_decoder", "mask_token", "videomae.layernorm"))
    )
    x = _video(3)
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed  # (B, N, D)
        for blk in model.blocks:
            tokens = blk(tokens)
        ln_w, ln_b = raw["videomae.layernorm.weight"], raw["videomae.layernorm.bias"]
        ours = F.layer_norm(tokens, (64,), ln_w, ln_b, cfg["norm_eps"])
        theirs = hf.videomae(x.permute(0, 2, 1, 3, 4)).last_hidden_state
    torch.testing.assert_close(ours, theirs)


def test_videomae_model_keys_without_prefix() -> None:
    hf = _random_hf(transformers.VideoMAEModel, 4)
    sd, fmt = convert_state_dict(hf.state_dict())
    backbone = VisionTransformer(embed_dim=64, depth=2, num_heads=2, num_frames=4, img_size=32)
    expected = {k for k in backbone.state_dict() if not k.startswith(("fc_norm.", "head."))}
    assert fmt == "hf" and set(sd) == expected


def _write_config(folder: Path, **cfg: object) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def test_read_hf_config_transformers4_names(tmp_path: Path) -> None:
    folder = _write_config(
        tmp_path / "v4",
        model_type="videomae",
        qkv_bias=False,
        image_size=[32, 32],
        hidden_size=64,
        num_attention_heads=2,
        intermediate_size=128,
        id2label={"1": "b", "0": "a"},
    )
    cfg = read_hf_config(folder)
    assert cfg["qkv_bias"] is False and cfg["img_size"] == 32 and cfg["mlp_ratio"] == 2.0
    assert (cfg["num_classes"], cfg["class_names"]) == (2, ["a", "b"])
    assert cfg["norm_eps"] == 1e-12 and cfg["num_frames"] == 16  # transformers' defaults


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"model_type": "vit"}, "not VideoMAE"),
        ({"model_type": "VideoMAEv2_Base", "model_config": {}}, "model zoo"),
        (
            {"architectures": ["VideoMAEForVideoClassification"], "use_mean_pooling": False},
            "mean-pool",
        ),
        ({"image_size": [32, 48]}, "non-square"),
    ],
)
def test_read_hf_config_refuses(tmp_path: Path, cfg: dict, needle: str) -> None:
    with pytest.raises(CheckpointError, match=needle):
        read_hf_config(_write_config(tmp_path / "cfg", **cfg))
