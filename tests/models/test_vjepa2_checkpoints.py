"""V-JEPA 2 checkpoints in the layouts users have, against transformers' numbers.

Each file is written in its real layout from one transformers ``VJEPA2ForVideoClassification``
with random values in every tensor: Meta's pre-training ``.pt`` (``module.backbone.``
keys, fused qkv, under ``target_encoder`` / ``encoder`` beside ``predictor`` and ``opt``),
Meta's attentive-probe file (``{"classifiers": [...]}``, ``module.`` keys, fused qkv and
kv, ``linear``), ``save_pretrained`` folders and a Hub cache used offline.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import aptune
from aptune.models.checkpoint_files import CheckpointError

transformers = pytest.importorskip("transformers")

from test_hub import COMMIT, lay_out_repo, use_offline_cache  # noqa: E402  (same folder; after the skip)

CLASSES = 5
#: transformers' pooler uses the encoder's heads; Meta's probes 16: one count fits both
SMALL = dict(
    hidden_size=128, num_hidden_layers=2, num_attention_heads=16, mlp_ratio=4.0,
    crop_size=32, frames_per_clip=4, pred_hidden_size=32, pred_num_hidden_layers=1,
    pred_num_attention_heads=2, num_labels=CLASSES,
)  # fmt: skip


def _hf(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    labels = {i: f"action {i}" for i in range(CLASSES)}
    cfg = transformers.VJEPA2Config(
        **SMALL, id2label=labels, label2id={v: k for k, v in labels.items()}
    )
    model = transformers.VJEPA2ForVideoClassification(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.1 for k, v in sd.items()})
    return model


def _x(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(seed))


def _hf_out(hf: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        video = x.transpose(1, 2)  # transformers takes (B, T, C, H, W)
        tokens = hf.vjepa2(pixel_values_videos=video, skip_predictor=True).last_hidden_state
        return tokens, hf(pixel_values_videos=video).logits


def _ours(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model.forward_tokens(x), model(x)


def _meta_encoder(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder as Meta's files keep it: ``module.backbone.`` keys, fused qkv."""
    sd, out = hf.state_dict(), {}
    depth = hf.config.num_hidden_layers
    for k, v in sd.items():
        if not k.startswith("vjepa2.encoder."):
            continue
        k = k.removeprefix("vjepa2.encoder.")
        k = k.replace("embeddings.patch_embeddings.proj.", "patch_embed.proj.")
        k = k.replace("layernorm.", "norm.").replace("layer.", "blocks.", 1)
        k = k.replace("attention.proj.", "attn.proj.")
        if ".attention." not in k:
            out["module.backbone." + k] = v
    for i in range(depth):
        for t in ("weight", "bias"):
            src = f"vjepa2.encoder.layer.{i}.attention."
            parts = [sd[f"{src}{n}.{t}"] for n in ("query", "key", "value")]
            out[f"module.backbone.blocks.{i}.attn.qkv.{t}"] = torch.cat(parts)
    return out


def _meta_probe(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The attentive classifier as Meta's probe files keep it."""
    sd, out = hf.state_dict(), {"module.pooler.query_tokens": hf.pooler.query_tokens.detach()}
    for i in range(hf.config.num_pooler_layers):
        src, dst = f"pooler.self_attention_layers.{i}.", f"module.pooler.blocks.{i}."
        for a, b in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2"), ("self_attn.out_proj", "attn.proj")):  # fmt: skip
            for t in ("weight", "bias"):
                out[f"{dst}{b}.{t}"] = sd[f"{src}{a}.{t}"]
        for t in ("weight", "bias"):
            out[f"{dst}attn.qkv.{t}"] = torch.cat(
                [sd[f"{src}self_attn.{n}_proj.{t}"] for n in "qkv"]
            )
    src, dst = "pooler.cross_attention_layer.", "module.pooler.cross_attention_block."
    for t in ("weight", "bias"):
        for a, b in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("mlp.fc1", "mlp.fc1"),
                     ("mlp.fc2", "mlp.fc2"), ("cross_attn.q_proj", "xattn.q")):  # fmt: skip
            out[f"{dst}{b}.{t}"] = sd[f"{src}{a}.{t}"]
        out[f"{dst}xattn.kv.{t}"] = torch.cat([sd[f"{src}cross_attn.{n}_proj.{t}"] for n in "kv"])
        out[f"module.linear.{t}"] = sd[f"classifier.{t}"]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("vjepa2")
    hf, other = _hf(0), _hf(7)
    hf.save_pretrained(tmp / "classifier")
    hf.vjepa2.save_pretrained(tmp / "encoder")
    target, online = _meta_encoder(hf), _meta_encoder(other)
    predictor = {"module.backbone.predictor_embed.weight": torch.zeros(4, 4)}
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    torch.save({"encoder": online, "target_encoder": target, "predictor": predictor, "opt": opt,
                "epoch": 10, "loss": 0.5}, tmp / "vitx.pt")  # fmt: skip
    torch.save({"classifiers": [_meta_probe(hf), _meta_probe(other)], "epoch": 20},
               tmp / "probe.pt")  # fmt: skip
    return {"dir": tmp, "hf": hf, "other": other}


@pytest.fixture(autouse=True)
def _small_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files are 128 wide, 2 deep, 16 heads: a named size of that shape for the test."""
    from aptune.models import sizes

    monkeypatch.setitem(sizes.MODEL_SIZES, "vjepa2_vit_test_patch16_32", (128, 2, 16))
    monkeypatch.setitem(sizes.VJEPA2_INPUT_SIZES, "vjepa2_vit_test_patch16_32", 32)


TEST_NAME = "vjepa2_vit_test_patch16_32"


def test_hf_classifier_folder_gives_transformers_tokens_and_logits(files) -> None:
    model = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "classifier",
                               num_classes=CLASSES, num_frames=4,
                               transfer_type="linear")  # fmt: skip
    tokens, logits = _ours(model, _x())
    want_tokens, want_logits = _hf_out(files["hf"], _x())
    assert tokens.shape == want_tokens.shape == (2, 2 * 2 * 2, 128)
    assert (tokens - want_tokens).abs().max() < 1e-4
    assert (logits - want_logits).abs().max() < 1e-4
    # transformers' pooler: the encoder's heads and eps, input size from crop_size
    assert model.pooler.num_heads == 16 and model.pooler.eps == pytest.approx(1e-6)
    assert model.img_size == 32


def test_hf_encoder_folder_drops_the_predictor_and_keeps_a_fresh_head(files) -> None:
    model = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "encoder",
                               num_classes=3, num_frames=4, transfer_type="prompt")  # fmt: skip
    want, _ = _hf_out(files["hf"], _x())
    model.kv_prompts = None  # the encoder alone, as transformers runs it
    tokens, logits = _ours(model, _x())
    assert (tokens - want).abs().max() < 1e-4 and logits.shape == (2, 3)


def test_meta_pretraining_file_loads_the_target_encoder_by_default(files) -> None:
    model = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "vitx.pt",
                               num_classes=CLASSES, num_frames=4, input_size=32)  # fmt: skip
    model.kv_prompts = None
    tokens, _ = _ours(model, _x())
    assert (tokens - _hf_out(files["hf"], _x())[0]).abs().max() < 1e-4
    online = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "vitx.pt", model_key="encoder",
                                num_classes=CLASSES, num_frames=4, input_size=32,
                                transfer_type="linear")  # fmt: skip
    tokens, _ = _ours(online, _x())
    assert (tokens - _hf_out(files["other"], _x())[0]).abs().max() < 1e-4


def test_meta_probe_file_with_its_encoder_gives_transformers_logits(files) -> None:
    model = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "vitx.pt",
                               head_checkpoint=files["dir"] / "probe.pt", num_classes=CLASSES,
                               num_frames=4, input_size=32, transfer_type="linear")  # fmt: skip
    assert model.pooler.num_heads == 16 and model.pooler.eps == pytest.approx(1e-5)
    assert len(model.pooler.blocks) == 3
    _, logits = _ours(model, _x())
    # Meta's probe LayerNorms use eps 1e-5, transformers' 1e-6: equal to well within 1e-4
    assert (logits - _hf_out(files["hf"], _x())[1]).abs().max() < 1e-4


def test_hub_id_offline_from_the_cache(files, tmp_path: Path, monkeypatch) -> None:
    folder = files["dir"] / "classifier"
    blobs = {n: (folder / n).read_bytes() for n in ("config.json", "model.safetensors")}
    lay_out_repo(tmp_path / "cache", "facebook/vjepa2-test-ssv2", COMMIT, blobs)
    use_offline_cache(monkeypatch, tmp_path / "cache")
    for source in ("facebook/vjepa2-test-ssv2", f"hf://facebook/vjepa2-test-ssv2@{COMMIT}"):
        model = aptune.build_model(TEST_NAME, checkpoint=source, num_classes=CLASSES,
                                   num_frames=4, transfer_type="linear")  # fmt: skip
        _, logits = _ours(model, _x())
        assert (logits - _hf_out(files["hf"], _x())[1]).abs().max() < 1e-4
        assert model.class_names == [f"action {i}" for i in range(CLASSES)]


def test_other_class_count_reinitialises_the_head_and_linear_head_skips_the_pooler(files) -> None:
    model = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "classifier", num_classes=3,
                               num_frames=4, transfer_type="linear")  # fmt: skip
    torch.testing.assert_close(
        model.pooler.query_tokens.detach(), files["hf"].pooler.query_tokens.detach()
    )
    assert model.head.out_features == 3
    linear = aptune.build_model(TEST_NAME, checkpoint=files["dir"] / "classifier", head="linear",
                                num_classes=CLASSES, num_frames=4,
                                transfer_type="linear")  # fmt: skip
    trained = {n for n, p in linear.named_parameters() if p.requires_grad}
    assert linear.pooler is None
    assert trained == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}


def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize(
    ("kw", "needles"),
    [
        ({"model_key": "predictor"}, ("vitx.pt", "predictor", "target_encoder")),
        ({"model_key": "opt"}, ("vitx.pt", "optimizer", "target_encoder")),
        ({"model": "vjepa2_vit_large_patch16_256"}, ("vitx.pt", "width 128", "1024")),
        ({"head": "linear", "head_checkpoint": "probe.pt"}, ("--head attentive",)),
    ],
)
def test_wrong_use_of_a_meta_file_is_one_line(files, kw: dict, needles: tuple) -> None:
    kw = dict(kw)
    name = kw.pop("model", TEST_NAME)
    if "head_checkpoint" in kw:
        kw["head_checkpoint"] = files["dir"] / kw["head_checkpoint"]
    with pytest.raises((CheckpointError, ValueError)) as e:
        aptune.build_model(name, checkpoint=files["dir"] / "vitx.pt", num_frames=4, **kw)
    assert all(n in _one_line(e) for n in needles), str(e.value)


def test_wrong_files_are_one_line(files, tmp_path: Path) -> None:
    videomae = aptune.build_model("vit_nano_patch16_224", num_frames=4, input_size=32)
    torch.save({"model": videomae.state_dict()}, tmp_path / "videomae.pth")
    torch.save({"predictor": {"module.backbone.predictor_embed.weight": torch.zeros(2)}},
               tmp_path / "predictor.pt")  # fmt: skip
    torch.save({"ema_encoder": {"module.backbone.video_mod_embed": torch.zeros(1, 1, 8)}},
               tmp_path / "vjepa2_1_vitl_dist_vitG_384.pt")  # fmt: skip
    cases = [
        (TEST_NAME, tmp_path / "videomae.pth", ("videomae.pth", "VideoMAE", "vit_*")),
        (TEST_NAME, tmp_path / "predictor.pt", ("predictor.pt", "predictor", "target_encoder")),
        (TEST_NAME, tmp_path / "vjepa2_1_vitl_dist_vitG_384.pt", ("V-JEPA 2.1", "vjepa2_1_")),
        (TEST_NAME, files["dir"] / "probe.pt", ("probe.pt", "--head_checkpoint")),
        ("vit_nano_patch16_224", files["dir"] / "vitx.pt", ("vitx.pt", "vjepa2_")),
        ("vit_nano_patch16_224", files["dir"] / "classifier", ("V-JEPA 2", "vjepa2_")),
    ]
    for name, path, needles in cases:
        with pytest.raises(CheckpointError) as e:
            aptune.build_model(name, checkpoint=path, num_frames=4, input_size=32)
        assert all(n in _one_line(e) for n in needles), str(e.value)


def test_an_aptune_vjepa2_file_of_a_videomae_name_is_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = aptune.build_model("vjepa2_vit_nano_patch16_256", num_frames=4, input_size=32)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError) as e:
        aptune.build_model("vit_nano_patch16_224", checkpoint=tmp_path / "m.safetensors")
    assert "vjepa2_" in _one_line(e)
    again = aptune.build_model("vjepa2_vit_nano_patch16_256", checkpoint=tmp_path / "m.safetensors",
                               num_frames=4, input_size=32)  # fmt: skip
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
