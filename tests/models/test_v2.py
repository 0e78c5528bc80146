"""VideoMAE V2 checkpoints: cosine attention, wrapper prefixes, Kinetics-710 heads.

No V2 code lives in this repository, so the files are built from V2's key names and the
logits are checked against an independent few-line forward pass written here.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import aptune
from aptune.models.checkpoint_io import CheckpointError
from aptune.models.convert import load_pretrained

D, DEPTH, HEADS, HIDDEN, K710 = 64, 2, 2, 256, 710
TINY = dict(num_frames=4, input_size=32)  # grid (2, 2, 2): 8 tokens


def v2_state_dict(seed: int = 0, classes: int = K710, cos: bool = True) -> dict[str, torch.Tensor]:
    """V2 fine-tuned layout (v1 names + ``attn.scale``), random values everywhere."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    sd = {"patch_embed.proj.weight": r(D, 3, 2, 16, 16), "patch_embed.proj.bias": r(D)}
    for i in range(DEPTH):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + r(D), b + "norm1.bias": r(D)})
        sd.update({b + "attn.qkv.weight": r(3 * D, D), b + "attn.q_bias": r(D)})
        sd.update({b + "attn.v_bias": r(D), b + "attn.proj.weight": r(D, D)})
        sd.update({b + "attn.proj.bias": r(D), b + "norm2.weight": 1 + r(D)})
        sd.update({b + "norm2.bias": r(D), b + "mlp.fc1.weight": r(HIDDEN, D)})
        sd.update({b + "mlp.fc1.bias": r(HIDDEN), b + "mlp.fc2.weight": r(D, HIDDEN)})
        sd[b + "mlp.fc2.bias"] = r(D)
        if cos:  # one head above the ln(100) cap, one below
            sd[b + "attn.scale"] = torch.tensor([5.5, 1.7]).reshape(HEADS, 1, 1) + r(HEADS, 1, 1)
    sd.update({"fc_norm.weight": 1 + r(D), "fc_norm.bias": r(D)})
    sd.update({"head.weight": r(classes, D), "head.bias": r(classes)})
    return sd


def reference_logits(sd: dict, x: torch.Tensor, prompts: dict | None = None) -> torch.Tensor:
    """V2's forward in a few lines: cosine attention, logit scale exp(min(s, ln 100))."""
    B = x.shape[0]
    w = sd["patch_embed.proj.weight"]
    t = F.conv3d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    n = t.shape[1]
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(D)
    angle = pos / 10000 ** (2 * (j // 2) / D)
    t = t + torch.where(j % 2 == 0, angle.sin(), angle.cos()).float()  # (B, N, D)
    for i in range(DEPTH):
        p = lambda name, i=i: sd[f"blocks.{i}.{name}"]  # noqa: E731
        h = F.layer_norm(t, (D,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        bias = torch.cat([p("attn.q_bias"), torch.zeros(D), p("attn.v_bias")])
        q, k, v = (h @ p("attn.qkv.weight").T + bias).reshape(B, n, 3, HEADS, -1).unbind(2)
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # (B, heads, N, d)
        if prompts and i in prompts:
            pk, pv = prompts[i]  # (M, d), shared by the heads
            k = torch.cat([k, pk.expand(B, HEADS, -1, -1)], 2)
            v = torch.cat([v, pv.expand(B, HEADS, -1, -1)], 2)
        logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        logits = logits * torch.clamp(p("attn.scale"), max=math.log(100)).exp()
        a = (logits.softmax(-1) @ v).transpose(1, 2).reshape(B, n, D)
        t = t + a @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = F.layer_norm(t, (D,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        t = t + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    f = F.layer_norm(t.mean(1), (D,), sd["fc_norm.weight"], sd["fc_norm.bias"], 1e-6)
    return f @ sd["head.weight"].T + sd["head.bias"]


X = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3))


def _build(path: Path | str, **kw: object) -> torch.nn.Module:
    kw = {"num_classes": K710, "transfer_type": "linear", **TINY, **kw}
    return aptune.build_model("vit_nano", checkpoint=path, **kw).eval()  # type: ignore[arg-type]


def _logits(model: torch.nn.Module, impl: str = "sdpa") -> torch.Tensor:
    model.set_attn_impl(impl)
    with torch.no_grad():
        return model(X)


@pytest.mark.parametrize(
    "prefix, key",
    [
        ("", "module"),
        ("module.", "model"),  # DDP state dict saved under "model"
        ("_orig_mod.", "module"),  # torch.compile'd model
        ("module._orig_mod.", "model"),
        ("_orig_mod.module.", None),  # a bare state dict file
        ("backbone.", "model"),
    ],
)
def test_v2_finetuned_file_detects_cos_attn_and_matches_reference(tmp_path, prefix, key) -> None:
    sd = v2_state_dict()
    stored = {prefix + k: v for k, v in sd.items()}
    torch.save(stored if key is None else {key: stored, "epoch": 9}, tmp_path / "v2.pth")
    model = _build(tmp_path / "v2.pth")  # cos_attn=None: detected
    assert all(blk.attn.cos_attn for blk in model.blocks)
    assert model.blocks[0].attn.scale.shape == (HEADS, 1, 1)
    expected = reference_logits(sd, X)
    torch.testing.assert_close(_logits(model, "sdpa"), expected)
    torch.testing.assert_close(_logits(model, "plain"), expected)  # H6's switch, both paths


def test_v2_pretraining_file_keeps_encoder(tmp_path) -> None:
    sd = v2_state_dict(1)
    enc = {f"encoder.{k}": v for k, v in sd.items() if not k.startswith(("head.", "fc_norm."))}
    enc.update({"encoder.norm.weight": torch.ones(D), "encoder.norm.bias": torch.zeros(D)})
    enc.update(
        {"decoder.blocks.0.attn.scale": torch.zeros(4, 1, 1), "mask_token": torch.zeros(1, 1, 32)}
    )
    enc["encoder_to_decoder.weight"] = torch.zeros(32, D)
    torch.save({"model": enc}, tmp_path / "pt.pth")
    model = _build(tmp_path / "pt.pth", num_classes=5)
    for k in ("blocks.1.attn.scale", "blocks.0.mlp.fc2.weight", "patch_embed.proj.weight"):
        torch.testing.assert_close(model.state_dict()[k], sd[k])


def test_k710_head_kept_with_710_classes_else_reinitialised_with_one_log_line(
    tmp_path, caplog
) -> None:
    sd = v2_state_dict(2)
    torch.save({"module": sd}, tmp_path / "k710.pth")
    with caplog.at_level(logging.INFO, logger="aptune"):
        kept = _build(tmp_path / "k710.pth")
    torch.testing.assert_close(kept.head.weight, sd["head.weight"])
    assert not [r for r in caplog.records if "re-initialised" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aptune"):
        model = _build(tmp_path / "k710.pth", num_classes=5)
    lines = [r.getMessage() for r in caplog.records if "re-initialised" in r.getMessage()]
    assert len(lines) == 1 and "710-class head" in lines[0] and "5 classes" in lines[0]
    assert "--nb_classes 710" in lines[0]
    assert model.head.weight.shape == (5, D)
    torch.testing.assert_close(model.fc_norm.weight, sd["fc_norm.weight"])  # the rest loaded


def test_apt_prompt_keys_are_normalised_like_data_keys(tmp_path) -> None:
    sd = v2_state_dict(3)
    torch.save({"module": sd}, tmp_path / "v2.pth")
    model = _build(tmp_path / "v2.pth", transfer_type="prompt", prompt_num_tokens=3, prompt_start=1)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # prompts far from unit length: unnormalised keys would differ
        model.kv_prompts.prompt_embeddings_k.copy_(torch.randn(1, 3, D // HEADS, generator=g) * 4)
        model.kv_prompts.prompt_embeddings_v.copy_(torch.randn(1, 3, D // HEADS, generator=g))
    kp = model.kv_prompts
    expected = reference_logits(sd, X, {1: (kp.prompt_embeddings_k[0], kp.prompt_embeddings_v[0])})
    torch.testing.assert_close(_logits(model, "sdpa"), expected.detach())
    torch.testing.assert_close(_logits(model, "plain"), expected.detach())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith("attn.scale") for n in trainable)  # frozen backbone under APT


def test_forcing_cos_attn_either_way_fails_with_the_flag_to_change(tmp_path) -> None:
    torch.save({"module": v2_state_dict(4)}, tmp_path / "v2.pth")
    torch.save({"module": v2_state_dict(4, cos=False)}, tmp_path / "v1.pth")
    with pytest.raises(CheckpointError, match="build with --cos_attn"):
        _build(tmp_path / "v2.pth", cos_attn=False)
    with pytest.raises(CheckpointError, match="build without --cos_attn"):
        _build(tmp_path / "v1.pth", cos_attn=True)
    assert not any(b.attn.cos_attn for b in _build(tmp_path / "v1.pth").blocks)


def test_cos_attn_scale_gets_no_weight_decay_and_trains_end2end(tmp_path) -> None:
    torch.save({"module": v2_state_dict(5)}, tmp_path / "v2.pth")
    model = _build(tmp_path / "v2.pth", transfer_type="end2end")
    assert model.no_weight_decay() == {f"blocks.{i}.attn.scale" for i in range(DEPTH)}
    assert model.blocks[0].attn.scale.requires_grad
    loss = model(X).logsumexp(-1).sum()
    loss.backward()
    assert model.blocks[0].attn.scale.grad[1].abs().item() > 0  # below the cap: learns
    assert model.blocks[0].attn.scale.grad[0].abs().item() == 0  # clamped at ln 100


def test_load_pretrained_names_cos_attn_for_a_plain_model(tmp_path) -> None:
    torch.save({"module": v2_state_dict(6)}, tmp_path / "v2.pth")
    model = aptune.build_model("vit_nano", num_classes=K710, **TINY)
    with pytest.raises(CheckpointError, match="unexpected.*attn.scale.*--cos_attn"):
        load_pretrained(model, tmp_path / "v2.pth")
