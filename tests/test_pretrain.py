"""aptune pretrain: tube masks, pixel targets, learning, the saved layout, resume after a
stop signal, the bundled backbone."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from engine_support import signal_at_check
from safetensors import safe_open

import aptune
from aptune.cli import main
from aptune.cli.pretrain import add_pretrain_parser, config_from_namespace
from aptune.commands.demo import QUICK, train_flags
from aptune.config import ConfigError
from aptune.data.errors import DataError
from aptune.data.synthetic import make_clip, write_video
from aptune.data.transforms import normalize
from aptune.engine.checkpoint import check_complete
from aptune.models.convert import load_pretrained
from aptune.pretrain import demo_backbone_config, demo_backbone_path
from aptune.pretrain.config import PretrainConfig
from aptune.pretrain.data import find_videos
from aptune.pretrain.masking import random_mask, tube_mask
from aptune.pretrain.model import build_pretrain_model, masked_mse, pixel_targets
from aptune.tuning import registered_prefixes

TINY = dict(name="vit_nano_patch16_224", num_frames=4, img_size=32, decoder_depth=1)


# -- masking --------------------------------------------------------------------------------
def test_tube_mask_counts_and_same_pattern_over_time():
    grid = (4, 3, 3)  # t, h, w
    mask = tube_mask(grid, 0.75, 6, torch.Generator().manual_seed(0))
    assert mask.shape == (6, 36) and mask.dtype == torch.bool
    per_slice = int(0.75 * 9)
    assert mask.sum(dim=1).tolist() == [4 * per_slice] * 6  # exact count in every clip
    slices = mask.view(6, 4, 9)  # (B, t, h*w) in (t, h, w) token order
    assert torch.equal(slices, slices[:, :1].expand(-1, 4, -1))  # tubes: same over time
    assert len({tuple(s) for s in slices[:, 0].tolist()}) > 1  # clips differ
    again = tube_mask(grid, 0.75, 6, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)  # a pure function of the generator
    with pytest.raises(ValueError, match="mask_ratio"):
        tube_mask(grid, 1.0, 1)
    free = random_mask(grid, 0.75, 6, torch.Generator().manual_seed(0))
    assert free.sum(dim=1).tolist() == [27] * 6  # int(0.75 * 36), anywhere in the clip


# -- targets --------------------------------------------------------------------------------
def _reference_targets(clips: torch.Tensor, tub: int, p: int, norm: bool) -> torch.Tensor:
    """Token by token, pixel by pixel: what VideoMAE's rearrange + normalisation computes."""
    mean = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1, 1)
    rows = []
    for clip in clips:
        x = clip * std + mean  # (3, T, H, W) in [0, 1]
        _, T, H, W = x.shape
        tokens = []
        for t in range(T // tub):
            for h in range(H // p):
                for w in range(W // p):
                    cube = x[:, t * tub : (t + 1) * tub, h * p : (h + 1) * p, w * p : (w + 1) * p]
                    px = cube.reshape(3, -1).T.clone()  # (tub*p*p, 3): (pt, ph, pw) order
                    if norm:
                        for c in range(3):
                            col = px[:, c]
                            px[:, c] = (col - col.mean()) / (col.std(unbiased=True) + 1e-6)
                    tokens.append(px.reshape(-1))  # features (pt, ph, pw, c)
        rows.append(torch.stack(tokens))
    return torch.stack(rows)


@pytest.mark.parametrize("norm", [True, False])
def test_pixel_targets_match_handwritten_reference(norm):
    clips = torch.randn(2, 3, 4, 6, 9)[..., :6]  # (B, 3, T, H, W), non-contiguous on purpose
    got = pixel_targets(clips, tubelet_size=2, patch_size=3, norm_pix=norm)
    want = _reference_targets(clips, 2, 3, norm)
    assert got.shape == (2, 2 * 2 * 2, 2 * 3 * 3 * 3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- model ----------------------------------------------------------------------------------
def _clips(n: int, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([normalize(make_clip(i, frames, (size, size), rng)) for i in range(n)])


def test_state_dict_is_the_official_pretrain_layout():
    model = build_pretrain_model(**TINY)
    keys = set(model.state_dict())
    for k in ("encoder.patch_embed.proj.weight", "encoder.blocks.1.attn.q_bias",
              "encoder.blocks.0.mlp.fc2.bias", "encoder.norm.weight",
              "encoder_to_decoder.weight", "mask_token", "decoder.blocks.0.attn.qkv.weight",
              "decoder.norm.bias", "decoder.head.weight"):  # fmt: skip
        assert k in keys, k
    assert "encoder_to_decoder.bias" not in keys
    assert not any("pos_embed" in k for k in keys)  # fixed tables are not saved
    assert model.decoder.head.out_features == 3 * 2 * 16 * 16


def test_pretraining_loss_falls_on_a_few_videos():
    torch.manual_seed(0)
    model = build_pretrain_model(**TINY, decoder_dim=32, decoder_num_heads=2)
    clips = _clips(4)
    fixed = tube_mask(model.grid, 0.5, 4, torch.Generator().manual_seed(1))
    # raw-pixel targets, the bundled backbone's recipe (normalised targets of these calm,
    # noisy synthetic clips are mostly unpredictable noise; see docs/pretrain.md)
    target = pixel_targets(clips, 2, 16, norm_pix=False)

    def loss_on_fixed_mask() -> float:
        with torch.no_grad():
            return float(masked_mse(model(clips, fixed), target, fixed))

    before = loss_on_fixed_mask()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(2)
    for _ in range(20):
        mask = tube_mask(model.grid, 0.5, 4, gen)
        loss = masked_mse(model(clips, mask), target, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss_on_fixed_mask() < 0.85 * before


def test_encoder_equals_the_finetuning_backbone_on_all_tokens():
    """Same weights, no mask: the pre-training encoder and the fine-tuning ViT agree."""
    pre = build_pretrain_model(**TINY).eval()
    sd = {k.removeprefix("encoder."): v for k, v in pre.encoder_state_dict().items()}
    ft = aptune.build_model("vit_nano_patch16_224", num_classes=3, num_frames=4, input_size=32,
                            transfer_type="linear").eval()  # fmt: skip
    missing = ft.load_state_dict({k: v for k, v in sd.items() if not k.startswith("norm.")},
                                 strict=False).missing_keys  # fmt: skip
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    pre.encoder.norm = torch.nn.Identity()
    x = _clips(2)
    with torch.no_grad():
        want = pre.encoder(x, torch.zeros(2, 8, dtype=torch.bool))
        got = ft._run_blocks(ft.patch_embed(x) + ft.pos_embed, 0, ft.depth)
    torch.testing.assert_close(got, want)


# -- data -----------------------------------------------------------------------------------
def _videos(folder: Path, n: int = 4, frames: int = 8, size: int = 32) -> list[Path]:
    rng = np.random.default_rng(0)
    return [write_video(folder / "sub" / f"{i}.mp4", make_clip(i, frames, (size, size), rng))
            for i in range(n)]  # fmt: skip


def test_find_videos_from_folder_or_list(tmp_path):
    paths = _videos(tmp_path / "v", n=2)
    found, _ = find_videos(str(tmp_path / "v"))
    assert found == sorted(map(str, paths))
    lst = tmp_path / "lists"
    lst.mkdir()
    (lst / "train.csv").write_text(f"{paths[0]} 3\n{paths[1]}\n\n")  # label optional
    assert find_videos(str(lst))[0] == [str(paths[0]), str(paths[1])]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no videos"):
        find_videos(str(tmp_path / "empty"))


# -- the command ----------------------------------------------------------------------------
def _pretrain_cmd(data: Path, out: Path, epochs: int) -> list[str]:
    return ["pretrain", "--data_path", str(data), "--output_dir", str(out),
            "--model", "vit_nano_patch16_224", "--decoder_depth", "1", "--num_frames", "4",
            "--sampling_rate", "2", "--input_size", "32", "--batch_size", "2",
            "--epochs", str(epochs), "--warmup_epochs", "1", "--lr", "1e-3",
            "--num_workers", "0", "--no_progress", "--save_ckpt_freq", "1"]  # fmt: skip


def test_pretrain_command_output_loads_for_finetuning_and_resumes(tmp_path):
    _videos(tmp_path / "videos")
    out = tmp_path / "run"
    assert main(_pretrain_cmd(tmp_path / "videos", out, 2)) == 0
    weights = out / "pretrain.safetensors"
    with safe_open(str(weights), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert {"encoder.patch_embed.proj.weight", "encoder.norm.weight", "mask_token",
            "encoder_to_decoder.weight", "decoder.head.weight"} <= keys  # fmt: skip
    assert json.loads(meta["architecture"])["num_frames"] == 4
    log = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(np.isfinite(r["train_loss"]) for r in log)

    model = aptune.build_model(
        "vit_nano_patch16_224",
        num_classes=5,
        num_frames=4,
        input_size=32,
        transfer_type="prompt",
        checkpoint=weights,
    )
    fresh = aptune.build_model("vit_nano_patch16_224", num_classes=5, num_frames=4,
                               input_size=32, transfer_type="prompt")  # fmt: skip
    report = load_pretrained(fresh, weights, method_prefixes=registered_prefixes())
    assert report.format == "videomae-pretrain" and not report.unexpected
    expected = {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert set(report.missing) - expected == {k for k in report.missing if "prompt" in k}
    assert expected <= set(report.missing)
    # `aptune demo --backbone` reads the architecture from the same file
    kw = demo_backbone_config(weights)["build_model_kwargs"]
    assert kw == {"model": "vit_nano_patch16_224", "num_frames": 4, "input_size": 32,
                  "tubelet_size": 2}  # fmt: skip
    flags = train_flags("prompt", tmp_path, tmp_path / "demo", QUICK, 0, weights)
    assert flags[flags.index("--finetune") + 1] == str(weights)
    assert flags[flags.index("--input_size") + 1] == "32"
    # the run folder itself is accepted as the checkpoint path
    assert load_pretrained(fresh, out, method_prefixes=registered_prefixes()).format == (
        "videomae-pretrain"
    )
    with safe_open(str(weights), framework="pt") as f:
        torch.testing.assert_close(
            model.blocks[1].attn.qkv.weight, f.get_tensor("encoder.blocks.1.attn.qkv.weight")
        )

    # resume: one more epoch continues from the last checkpoint instead of restarting
    assert main(_pretrain_cmd(tmp_path / "videos", out, 3)) == 0
    log = [json.loads(x) for x in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_pretrain_stopped_by_sigterm_mid_epoch_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """SIGTERM seen after step 2 of epoch 1 (3 steps per epoch) writes a verified mid-epoch
    checkpoint and exits 143; rerunning ends with the uninterrupted run's weights and
    losses (masks, data order and RNG continue where they stopped)."""
    _videos(tmp_path / "videos", n=6)
    whole, out = tmp_path / "whole", tmp_path / "run"
    # at 0.5 the 2x2 tube grid has 6 masks: a restarted mask stream shows in the weights
    cmd = [*_pretrain_cmd(tmp_path / "videos", out, 3), "--mask_ratio", "0.5"]
    assert main([*cmd[:4], str(whole), *cmd[5:]]) == 0
    # 3 steps, the end-of-epoch check, 1 step of epoch 1: step 2 is the one that sees it
    signal_at_check(monkeypatch, 5, signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        main(cmd)
    assert stopped.value.code == 128 + signal.SIGTERM
    names = sorted(p.name for p in out.glob("checkpoint-*"))
    assert names == ["checkpoint-0000", "checkpoint-0001-step000002"]
    for name in names:  # every file of a checkpoint is listed with its size and sha256
        marker = json.loads((out / name / "COMPLETE").read_text())
        files = {p.name for p in (out / name).iterdir() if p.name != "COMPLETE"}
        assert set(marker["files"]) == files
        assert all(len(f["sha256"]) == 64 for f in marker["files"].values())
        check_complete(out / name)
    assert not (out / "pretrain.safetensors").exists()

    monkeypatch.undo()
    assert main(cmd) == 0
    losses = [[json.loads(x)["train_loss"] for x in (d / "log.txt").read_text().splitlines()]
              for d in (whole, out)]  # fmt: skip
    assert len(losses[1]) == 3 and losses[0] == losses[1]
    want, got = _weights(whole / "pretrain.safetensors"), _weights(out / "pretrain.safetensors")
    assert want.keys() == got.keys()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_pretrain_flags_are_registered(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = capsys.readouterr().out
    for flag in ("--mask_ratio", "--decoder_dim", "--decoder_depth", "--decoder_num_heads",
                 "--opt_betas", "--no_auto_resume", "--bf16", "--max_steps_per_epoch"):  # fmt: skip
        assert flag in text
    with pytest.raises(SystemExit):
        main(["pretrain", "--data_path", "x", "--output_dir", "y", "--mask_ratio", "1.0"])


def test_flags_become_the_config_and_its_defaults():
    """Every PretrainConfig field is a flag whose default is the field's; a flag's value
    arrives typed (``--opt_betas`` as a tuple)."""
    parser = argparse.ArgumentParser()
    add_pretrain_parser(parser.add_subparsers(dest="command"))
    required = ["pretrain", "--data_path", "v", "--output_dir", "o"]
    assert config_from_namespace(parser.parse_args(required)) == PretrainConfig("v", "o")
    flags = [*required, "--opt_betas", "0.8", "0.9", "--no_norm_pix_loss", "--mask_type", "random"]
    cfg = config_from_namespace(parser.parse_args(flags))
    assert cfg.opt_betas == (0.8, 0.9) and cfg.norm_pix_loss is False
    assert cfg.to_dict()["opt_betas"] == [0.8, 0.9] and cfg.mask_type == "random"


@pytest.mark.parametrize(
    "bad, message",
    [({"mask_ratio": 1.0}, "--mask_ratio must be in [0, 1), got 1.0"),
     ({"epochs": 0}, "--epochs must be >= 1, got 0"),
     ({"mask_type": "block"}, "--mask_type 'block': choose from tube, random")],
)  # fmt: skip
def test_config_rejects_what_the_flags_reject(bad, message):
    """Built from Python, the config refuses the values the parser refuses, in its words."""
    with pytest.raises(ConfigError) as err:
        PretrainConfig("v", "o", **bad)
    assert str(err.value) == message


# -- bundled backbone -----------------------------------------------------------------------
def test_bundled_backbone_loads_and_has_a_model_card():
    path = demo_backbone_path()
    assert path.stat().st_size < 8_000_000
    card = path.with_suffix(".md")
    assert card.is_file() and "train loss" in card.read_text()
    cfg = demo_backbone_config()
    kw = cfg["build_model_kwargs"]
    model = aptune.build_model(**kw, num_classes=10, transfer_type="prompt",
                               prompt_num_tokens=2, checkpoint=path)  # fmt: skip
    report = load_pretrained(aptune.build_model(**kw, num_classes=10, transfer_type="linear"), path)
    assert report.format == "videomae-pretrain"
    assert sorted(report.missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    x = torch.randn(1, 3, kw["num_frames"], kw["input_size"], kw["input_size"])
    with torch.no_grad():
        assert model.eval()(x).shape == (1, 10)
    curve = cfg["summary"]["loss_per_epoch"]
    # it learnt past the plateau of predicting colours (an earlier recipe stalled there:
    # 0.0279 at epoch 5, 0.0274 at the end)
    assert curve[-1] < 0.85 * curve[5]


def test_pretrain_model_of_vit_giant_uses_its_patch_and_mlp():
    """ViT-g pre-training builds patch 14 and MLP 6144 (on meta: no 4 GB of memory)."""
    from aptune.pretrain.model import build_pretrain_model

    with torch.device("meta"):
        m = build_pretrain_model("vit_giant_patch14_224", num_frames=16, img_size=224)
    assert m.patch_size == 14 and m.grid == (8, 16, 16)
    assert m.encoder.blocks[0].mlp.fc1.weight.shape == (6144, 1408)
    assert m.decoder.head.out_features == 3 * 2 * 14 * 14
    with pytest.raises(ValueError, match="multiple of 14"):
        build_pretrain_model("vit_giant_patch14_224", img_size=160)
