"""Checkpoint formats, safe reading, pos-table resampling and the promised errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from aptune.models.checkpoint_io import CheckpointError, read_checkpoint
from aptune.models.convert import convert_state_dict, load_pretrained, resample_pos_embed
from aptune.models.vit import VisionTransformer

FC_HEAD = ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]


def assert_loaded(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(own[k], v, msg=k)


def clip(seed: int = 0, size: int = 32, frames: int = 4) -> torch.Tensor:
    return torch.randn(2, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


# -- formats -------------------------------------------------------------------------------
def test_videomae_pretrain_loads_with_expected_missing(ckpt, videomae_pretrain_file) -> None:
    path, ours = videomae_pretrain_file
    model = ckpt.tiny_model()
    head_before = model.head.weight.clone()
    report = load_pretrained(model, path)
    assert report.format == "videomae-pretrain"
    assert report.missing == FC_HEAD
    assert report.unexpected == [] and report.resampled == [] and report.head_reset
    raw, _ = read_checkpoint(path)  # the safe reader (the file holds an argparse.Namespace)
    assert sorted(report.dropped) == sorted(
        k
        for k in raw
        if k.startswith(("decoder.", "encoder_to_decoder", "mask_token", "encoder.norm"))
    )
    assert_loaded(model, {k: v for k, v in ours.items() if k not in FC_HEAD})
    torch.testing.assert_close(model.head.weight, head_before)  # fresh head kept


def test_videomae_finetune_loads_everything(ckpt, videomae_finetune_file) -> None:
    path, ours = videomae_finetune_file
    model = ckpt.tiny_model()
    report = load_pretrained(model, path)
    assert (report.format, report.missing, report.dropped, report.head_reset) == (
        "videomae-finetune",
        [],
        [],
        False,
    )
    assert_loaded(model, ours)
    _, info = read_checkpoint(path)
    assert info["model_key"] == "module" and info["epoch"] == 3 and info["args"]["input_size"] == 32


def test_model_key_selects_entry_and_names_top_keys(ckpt, tmp_path: Path) -> None:
    path = tmp_path / "ema.pth"
    torch.save({"model_ema": ckpt.backbone_sd(0), "epoch": 1}, path)
    with pytest.raises(CheckpointError, match=r"model_ema.*--model_key"):
        read_checkpoint(path)
    assert load_pretrained(ckpt.tiny_model(), path, model_key="model|model_ema").missing == []


@pytest.mark.parametrize("sub", ["", "checkpoint-7", "checkpoint-7/mp_rank_00_model_states.pt"])
def test_deepspeed_output_folder_and_file(ckpt, deepspeed_output_dir, sub: str) -> None:
    out, ours = deepspeed_output_dir
    model = ckpt.tiny_model()
    report = load_pretrained(model, out / sub if sub else out)
    assert report.path.endswith("checkpoint-7/mp_rank_00_model_states.pt")
    assert report.format == "videomae-finetune" and report.missing == []
    assert_loaded(model, ours)
    _, info = read_checkpoint(out)
    assert (info["kind"], info["model_key"], info["epoch"]) == ("deepspeed", "module", 7)


def test_aptune_safetensors(ckpt, tmp_path: Path) -> None:
    from aptune.tuning.apt import apply_apt

    src = apply_apt(ckpt.tiny_model(), num_tokens=2, start=0, end=1, reparam=True)
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path), metadata={"format": "aptune"})
    model = apply_apt(ckpt.tiny_model(), num_tokens=2, start=0, end=1, reparam=True)
    report = load_pretrained(model, tmp_path)  # a folder holding model.safetensors
    assert report.format == "aptune" and report.missing == []
    assert_loaded(model, sd)


def test_backbone_into_prompted_model_keeps_prompt_init(ckpt, videomae_finetune_file) -> None:
    from aptune.tuning import registered_prefixes
    from aptune.tuning.apt import apply_apt

    model = apply_apt(ckpt.tiny_model(), num_tokens=2, start=0, end=1, reparam=True)
    report = load_pretrained(
        model, videomae_finetune_file[0], method_prefixes=registered_prefixes()
    )
    assert report.missing == [
        "kv_prompts.prompt_embeddings_k",
        "kv_prompts.prompt_embeddings_v",
        "kv_prompts.prompt_scale",
    ]


def test_method_keys_are_backbone_keys_unless_prefixes_are_given(
    ckpt, videomae_finetune_file
) -> None:
    """models/ does not know the methods: it asks the model which it carries
    (``tuning_configs``); a method attached by hand and not recorded makes the caller name
    the prefixes, instead of prompts silently keeping their init."""
    from aptune.tuning.apt import AptConfig, apply_apt

    model = apply_apt(ckpt.tiny_model(), num_tokens=2, start=0, end=1, reparam=True)
    assert load_pretrained(model, videomae_finetune_file[0]).format == "videomae-finetune"
    unrecorded = ckpt.tiny_model()
    AptConfig(num_tokens=2, start=0, end=1, reparam=True).attach(unrecorded)
    with pytest.raises(CheckpointError, match=r"3 missing \(kv_prompts.*registered_prefixes"):
        load_pretrained(unrecorded, videomae_finetune_file[0])


# -- reference APT ---------------------------------------------------------------------------
def reference_apt_logits(raw: dict, x: torch.Tensor, start: int, heads: int) -> torch.Tensor:
    """The reference APT forward written out on the raw state dict, block by block."""
    w = raw["patch_embed.proj.weight"]
    B, D = x.shape[0], w.shape[0]
    d = D // heads
    t = F.conv3d(x, w, raw["patch_embed.proj.bias"], stride=w.shape[2:]).flatten(2).transpose(1, 2)
    N = t.shape[1]
    table = torch.tensor(
        [[p / 10000 ** (2 * (j // 2) / D) for j in range(D)] for p in range(N)], dtype=torch.float64
    )
    table[:, 0::2], table[:, 1::2] = table[:, 0::2].sin(), table[:, 1::2].cos()
    t = t + table.float()
    depth = 1 + max(int(k.split(".")[1]) for k in raw if k.startswith("blocks."))
    for i in range(depth):
        p = lambda n, i=i: raw[f"blocks.{i}.{n}"]  # noqa: E731
        h = F.layer_norm(t, (D,), p("norm1.weight"), p("norm1.bias"), 1e-6)
        wq, wk, wv = p("attn.qkv.weight").chunk(3, dim=0)
        q = (h @ wq.T + p("attn.q_bias")).reshape(B, N, heads, d).transpose(1, 2)
        k = (h @ wk.T).reshape(B, N, heads, d).transpose(1, 2)
        v = (h @ wv.T + p("attn.v_bias")).reshape(B, N, heads, d).transpose(1, 2)
        j = i - start
        if 0 <= j < raw["prompt_embeddings_k"].shape[0]:
            s = raw["prompt_scale"][j].clamp(min=1.0)  # max(scale, 1): (2, T)
            pk = raw["prompt_embeddings_k"][j] * s[0][:, None]  # (T, d)
            pv = raw["prompt_embeddings_v"][j] * s[1][:, None]
            k = torch.cat([k, pk.expand(B, heads, -1, d)], dim=2)
            v = torch.cat([v, pv.expand(B, heads, -1, d)], dim=2)
        a = torch.softmax(q @ k.transpose(-1, -2) * d**-0.5, dim=-1)
        o = (a @ v).transpose(1, 2).reshape(B, N, D)
        t = t + o @ p("attn.proj.weight").T + p("attn.proj.bias")
        h = F.layer_norm(t, (D,), p("norm2.weight"), p("norm2.bias"), 1e-6)
        h = F.gelu(h @ p("mlp.fc1.weight").T + p("mlp.fc1.bias"))
        t = t + h @ p("mlp.fc2.weight").T + p("mlp.fc2.bias")
    f = F.layer_norm(t.mean(1), (D,), raw["head_norm.weight"], raw["head_norm.bias"], 1e-6)
    return f @ raw["head.weight"].T + raw["head.bias"]


def test_apt_reference_checkpoint_gives_reference_logits(ckpt, apt_reference_file) -> None:
    from aptune.tuning.apt import apply_apt

    path, raw = apt_reference_file
    model = apply_apt(
        ckpt.tiny_model(), ckpt.APT_TOKENS, ckpt.APT_START, ckpt.APT_END, dropout=0.0, reparam=True
    )
    report = load_pretrained(model, path)
    assert report.format == "apt-reference" and report.missing == [] and not report.head_reset
    x = clip(1)
    expected = reference_apt_logits(raw, x, ckpt.APT_START, ckpt.TINY["num_heads"])
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected)
        model.set_attn_impl("plain")
        torch.testing.assert_close(model(x), expected)


def test_build_model_loads_apt_reference(ckpt, apt_reference_file) -> None:
    import aptune

    path, raw = apt_reference_file
    model = aptune.build_model(
        "vit_nano_patch16_224",
        num_classes=5,
        transfer_type="prompt",
        prompt_num_tokens=ckpt.APT_TOKENS,
        prompt_start=ckpt.APT_START,
        prompt_end=ckpt.APT_END,
        prompt_reparam=True,
        num_frames=4,
        input_size=32,
        checkpoint=path,
        model_key="model|module",
    ).eval()
    x = clip(2)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_apt_logits(raw, x, ckpt.APT_START, 2))


@pytest.mark.parametrize(
    "tokens, start, end, reparam, needle",
    [  # the fixture's prompts: block 1 only, 3 tokens, reparam
        (2, 1, 1, True, r"--prompt_num_tokens 3 .*--prompt_start 0 --prompt_end 0"),
        (3, 0, 1, True, r"1 layers x 3 tokens.*2 layers from block 0"),
        (3, 1, 1, False, r"--prompt_reparam"),
        (None, 0, 0, False, r"holds APT prompts .*--transfer_type prompt"),
    ],
)
def test_apt_prompt_mismatch_names_the_flags(
    ckpt, apt_reference_file, tokens, start, end, reparam, needle
) -> None:
    from aptune.tuning.apt import apply_apt

    model = ckpt.tiny_model()
    if tokens:
        apply_apt(model, tokens, start, end, reparam=reparam)
    with pytest.raises(CheckpointError, match=needle) as e:
        load_pretrained(model, apt_reference_file[0])
    assert "\n" not in str(e.value) and str(apt_reference_file[0]) in str(e.value)


# -- position table and head ------------------------------------------------------------------
def _file_with_pos_embed(ckpt, tmp_path: Path, table: torch.Tensor) -> Path:
    sd = {**ckpt.backbone_sd(6), "pos_embed": table}
    path = tmp_path / "learned_pos.pth"
    torch.save(ckpt.reference_file(sd), path)
    return path


def test_pos_embed_resampled_bicubic_per_time_slice(ckpt, tmp_path: Path) -> None:
    table = torch.randn(1, 2 * 2 * 2, 64)  # learned table at 32 px: grid (t, h, w) = (2, 2, 2)
    model = ckpt.tiny_model(img_size=48)  # grid (2, 3, 3)
    report = load_pretrained(model, _file_with_pos_embed(ckpt, tmp_path, table))
    assert report.resampled == ["pos_embed"] and report.missing == []
    slices = table.reshape(2, 2, 2, 64).permute(0, 3, 1, 2)  # (t, D, h, w)
    by_hand = F.interpolate(slices, size=(3, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(model.pos_embed, by_hand.permute(0, 2, 3, 1).reshape(1, 18, 64))
    model(clip(0, size=48))  # the new grid runs


def test_pos_embed_resampled_in_time(ckpt, tmp_path: Path) -> None:
    table = torch.randn(1, 8, 64)
    model = ckpt.tiny_model(num_frames=8)  # grid (4, 2, 2): same spatial size, more frames
    load_pretrained(model, _file_with_pos_embed(ckpt, tmp_path, table))
    cols = table.reshape(2, 4, 64).permute(1, 2, 0)  # (h*w, D, t)
    by_hand = F.interpolate(cols, size=4, mode="linear", align_corners=False)
    torch.testing.assert_close(model.pos_embed, by_hand.permute(2, 0, 1).reshape(1, 16, 64))


def test_pos_embed_same_grid_copied_fixed_table_ignored(ckpt, tmp_path: Path) -> None:
    learned = torch.randn(1, 8, 64)
    model = ckpt.tiny_model()
    assert load_pretrained(model, _file_with_pos_embed(ckpt, tmp_path, learned)).resampled == [
        "pos_embed"
    ]
    torch.testing.assert_close(model.pos_embed, learned)
    fixed = ckpt.tiny_model().pos_embed.clone()
    report = load_pretrained(
        model := ckpt.tiny_model(img_size=48), _file_with_pos_embed(ckpt, tmp_path, fixed)
    )
    assert report.resampled == [] and "pos_embed" in report.dropped
    torch.testing.assert_close(
        model.pos_embed, VisionTransformer(**{**ckpt.TINY, "img_size": 48}).pos_embed
    )


def test_resample_identity_and_shape() -> None:
    t = torch.randn(1, 2 * 3 * 3, 8)
    torch.testing.assert_close(resample_pos_embed(t, (2, 3, 3), (2, 3, 3)), t)
    assert resample_pos_embed(t[0], (2, 3, 3), (4, 5, 5)).shape == (4 * 5 * 5, 8)


def test_head_dropped_and_reset_when_class_count_differs(ckpt, videomae_finetune_file) -> None:
    path, ours = videomae_finetune_file
    model = ckpt.tiny_model(num_classes=7)
    fresh = model.head.weight.clone()
    report = load_pretrained(model, path)
    assert report.head_reset and report.dropped == ["head.weight", "head.bias"]
    assert report.missing == ["head.bias", "head.weight"]
    torch.testing.assert_close(model.head.weight, fresh)
    assert_loaded(model, {k: v for k, v in ours.items() if not k.startswith("head.")})


# -- bad files ---------------------------------------------------------------------------------
MARKER_NAME = "unpickling_ran_code"


def _touch(path: str) -> None:  # what a malicious pickle would call
    Path(path).write_text("pwned")


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_touch, (str(self.marker),))


def _bad_files(ckpt, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.pth"
    torch.save({"model": ckpt.backbone_sd(0)}, good)
    files: dict[str, tuple[Path, str]] = {}

    def write(name: str, obj: object, needle: str) -> None:
        files[name] = (tmp_path / f"{name}.pth", needle)
        torch.save(obj, files[name][0])

    files["text"] = (tmp_path / "notes.pth", "not a PyTorch checkpoint")
    files["text"][0].write_text("epoch 3: loss 0.12\n")
    files["no_such_file"] = (tmp_path / "nope.pth", "no such file")
    files["bad_safetensors"] = (tmp_path / "model.safetensors", r"not a readable \.safetensors")
    files["bad_safetensors"][0].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    files["empty"] = (tmp_path / "empty.pth", "empty")
    files["empty"][0].write_bytes(b"")
    files["truncated"] = (tmp_path / "truncated.pth", "truncated")
    files["truncated"][0].write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    write(
        "pickle_global",
        {"model": ckpt.backbone_sd(0), "x": Payload(tmp_path / MARKER_NAME)},
        r"_touch.*could run code",
    )
    g = torch.Generator().manual_seed(0)
    image_vit = {
        "cls_token": torch.zeros(1, 1, 64),
        "pos_embed": torch.zeros(1, 5, 64),
        "patch_embed.proj.weight": torch.randn(64, 3, 16, 16, generator=g),
        "patch_embed.proj.bias": torch.zeros(64),
        "blocks.0.attn.qkv.weight": torch.zeros(192, 64),
        "blocks.0.attn.qkv.bias": torch.zeros(192),
    }
    write("image_vit", {"model": image_vit}, "2-D image model")
    wide = VisionTransformer(**{**ckpt.TINY, "embed_dim": 128, "num_heads": 4}).state_dict()
    write("wide", {"model": wide}, r"embed dim 128 .* has 64.*vit_micro")
    write(
        "extra",
        {"model": {**ckpt.backbone_sd(0), "blocks.0.attn.extra": torch.zeros(3)}},
        r"videomae-finetune.*1 unexpected \(blocks.0.attn.extra\)",
    )
    lacking = {k: v for k, v in ckpt.backbone_sd(0).items() if not k.startswith("blocks.1.")}
    write("shallow", {"model": lacking}, r"missing.*blocks.1.*file has 1 blocks, the model 2")
    write("not_videomae", {"model": {"conv1.weight": torch.zeros(3)}}, "not a VideoMAE-style")
    return files


BAD = [
    "no_such_file",
    "bad_safetensors",
    "text",
    "empty",
    "truncated",
    "pickle_global",
    "image_vit",
    "wide",
    "extra",
    "shallow",
    "not_videomae",
]


@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_one_line_error(ckpt, tmp_path: Path, name: str) -> None:
    path, needle = _bad_files(ckpt, tmp_path)[name]
    with pytest.raises(CheckpointError, match=needle) as e:
        load_pretrained(ckpt.tiny_model(), path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    assert not (tmp_path / MARKER_NAME).exists()  # nothing in the file was executed


def test_convert_state_dict_renames_only(ckpt) -> None:
    sd, fmt = convert_state_dict({f"backbone.{k}": v for k, v in ckpt.backbone_sd(0).items()})
    assert fmt == "videomae-finetune" and sorted(sd) == sorted(ckpt.backbone_sd(0))
    assert math.isclose(float(sd["head.bias"][0]), float(ckpt.backbone_sd(0)["head.bias"][0]))


def test_aptune_checkpoint_folder_is_not_taken_for_a_hugging_face_folder(tmp_path: Path) -> None:
    """A run's checkpoint-N/ holds config.json (run flags) + model.safetensors too."""
    import json

    from safetensors.torch import save_file

    import aptune
    from aptune.models.checkpoint_io import is_hf_folder

    sd = {k: v.contiguous() for k, v in backbone_sd_for_folder().items()}
    folder = tmp_path / "checkpoint-best"
    folder.mkdir()
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "aptune"})
    (folder / "config.json").write_text(json.dumps({"model": "vit_nano", "nb_classes": 5}))
    assert not is_hf_folder(folder)
    model = aptune.build_model(
        "vit_nano", num_classes=5, num_frames=4, input_size=32, checkpoint=folder
    )
    assert model.embed_dim == 64  # not transformers' default 768 from a "config.json"
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, sd["blocks.1.attn.qkv.weight"])


def backbone_sd_for_folder() -> dict:
    g = torch.Generator().manual_seed(11)
    model = VisionTransformer(
        embed_dim=64, depth=2, num_heads=2, num_frames=4, img_size=32, num_classes=5
    )
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
