"""``aptune profile`` on the tiny ViT: counted FLOPs in closed form, sane rows, files written."""

from __future__ import annotations

import argparse
import json

import pytest

from aptune.cli.profile import add_profile_parser, main
from aptune.commands.profile import flops_sweep, profile_methods

D, DEPTH, C, N, P = 64, 2, 4, 8, 2  # tiny ViT: 4 frames x 32 px -> 8 tokens; 2 prompts
TINY = dict(model_name="vit_nano", num_frames=4, input_size=32, batch_size=2, num_classes=C)


def forward_flops(tokens: int, keys: int) -> int:
    """Multiply-add = 2: tubelet conv, qkv + proj + MLP per token, q k^T and attn v, head."""
    conv = 2 * N * D * (3 * 2 * 16 * 16)
    linear = 2 * tokens * (3 * D * D + D * D + 2 * 4 * D * D)
    attention = 2 * 2 * tokens * keys * D  # two matmuls over all heads
    return conv + DEPTH * (linear + attention) + 2 * D * C


def test_rows_count_flops_in_closed_form_and_are_sane():
    rows = profile_methods(
        methods=["prompt", "vpt_deep", "linear"],
        method_options={"prompt_num_tokens": P, "vpt_num_tokens": P},
        repeats=1,
        isolate=False,
        **TINY,
    )
    by = {r["method"]: r for r in rows}
    assert list(by) == ["prompt", "vpt_deep", "linear"]
    # SDPA is counted (APT only changes the attention), data tokens only for APT
    assert by["linear"]["fwd_gflops"] * 1e9 == pytest.approx(forward_flops(N, N))
    assert by["prompt"]["fwd_gflops"] * 1e9 == pytest.approx(forward_flops(N, N + P))
    assert by["vpt_deep"]["fwd_gflops"] * 1e9 == pytest.approx(forward_flops(N + P, N + P))
    assert 1.0 < by["prompt"]["fwd_vs_linear"] < 1.01 < by["vpt_deep"]["fwd_vs_linear"]
    head = 2 * D + D * C + C
    assert by["linear"]["trainable_params"] == head
    assert by["prompt"]["trainable_params"] == head + DEPTH * 2 * P * (D // 2)
    assert by["vpt_deep"]["trainable_params"] == head + DEPTH * P * D
    for r in rows:
        assert r["train_gflops"] > r["fwd_gflops"] > 0
        assert r["infer_s_per_clip"] > 0 and r["train_s_per_clip"] > 0
        assert r["peak_train_mb"] >= r["rss_model_mb"] * 0.5 > 0
        assert 4 * r["trainable_params"] < r["ckpt_bytes"] < 4 * r["trainable_params"] + 4096
        assert 0 < r["trainable_pct"] < 100
        assert r["act_peak_mb"] >= r["act_kept_mb"] > 0 and not r["use_checkpoint"]


def test_checkpointed_rows_keep_less_and_count_the_recomputation():
    """``--use_checkpoint``: a second row per method; on depth 2 one block is checkpointed."""
    rows = profile_methods(
        methods=["prompt", "end2end"], method_options={"prompt_num_tokens": P}, repeats=1,
        isolate=False, use_checkpoint=True, **TINY,
    )  # fmt: skip
    assert [(r["method"], r["use_checkpoint"]) for r in rows] == [
        ("prompt", False), ("prompt", True), ("end2end", False), ("end2end", True),
    ]  # fmt: skip
    for plain, ckpt in (rows[:2], rows[2:]):
        assert ckpt["act_kept_mb"] < plain["act_kept_mb"]
        assert ckpt["act_kept_vs_plain"] == ckpt["act_kept_mb"] / plain["act_kept_mb"] < 1
        assert ckpt["act_peak_vs_plain"] == ckpt["act_peak_mb"] / plain["act_peak_mb"]
        assert ckpt["train_gflops"] > plain["train_gflops"]  # block 0 runs forward twice
        assert ckpt["fwd_gflops"] == plain["fwd_gflops"] and "act_kept_vs_plain" not in plain
    from aptune.commands.profile_output import markdown

    md = markdown({"model": "vit_nano", "num_frames": 4, "input_size": 32, "batch_size": 2,
                   "nb_classes": C}, rows, [])  # fmt: skip
    assert "| prompt | " in md and "| prompt +ckpt | " in md
    assert f"({rows[1]['act_kept_vs_plain']:.2f}x)" in md


def test_tensor_peak_counts_each_storage_once_while_alive():
    import torch

    from aptune.commands.profile_memory import TensorPeak

    w = torch.ones(256)  # made before: not counted, nor its views or in-place results
    with TensorPeak() as tracker:
        a = torch.zeros(1024)  # 4 KiB
        view, _ = a[:512], w.add_(1)
        b = a * 2  # 4 KiB
        del a, view, b
        c = torch.empty(512)  # 2 KiB, after 8 KiB were released
    assert (tracker.peak, tracker.live) == (8192, 2048)
    del c
    assert tracker.live == 0


def test_flop_sweep_apt_flat_vpt_deep_grows():
    sweep = flops_sweep("vit_nano", [2, 8], num_frames=4, input_size=32, num_classes=C)
    assert [s["tokens"] for s in sweep] == [0, 2, 8]
    base = sweep[0]["linear"]
    for s in sweep[1:]:
        assert s["prompt"] * 1e9 == pytest.approx(forward_flops(N, N + s["tokens"]))
        assert s["vpt_deep"] * 1e9 == pytest.approx(forward_flops(N + s["tokens"], N + s["tokens"]))
        assert s["prompt"] - base < (s["vpt_deep"] - base) / 10


def test_cli_runs_each_method_in_its_own_process_and_writes_files(tmp_path):
    out = tmp_path / "prof"
    argv = "--model vit_nano --num_frames 4 --input_size 32 --batch_size 1 --nb_classes 4"
    argv += f" --methods prompt,lora --prompt_num_tokens 3 --repeats 1 --token_sweep 3 --out {out}"
    assert main(argv.split()) == 0
    data = json.loads((out / "profile.json").read_text())
    assert [r["method"] for r in data["rows"]] == ["prompt", "lora"]
    assert data["settings"]["options"] == {"prompt_num_tokens": 3, "vpt_num_tokens": 3}
    assert data["settings"]["command"].startswith(
        "python -m aptune.commands.profile --model vit_nano"
    )
    md = (out / "profile.md").read_text()
    assert "| prompt | " in md and "| lora | " in md and "| 3 | " in md
    assert (out / "profile.png").read_bytes()[:4] == b"\x89PNG"


def test_profile_subcommand_registers_flags_and_rejects_bad_options(capsys):
    parser = argparse.ArgumentParser(prog="aptune")
    add_profile_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["profile", "--lora_rank", "4", "--adapter_dim", "16", "--bf16"])
    assert (args.lora_rank, args.adapter_dim, args.bf16, args.vpt_num_tokens) == (4, 16, True, None)
    assert args.func.__name__ == "run_profile" and not args.use_checkpoint
    assert parser.parse_args(["profile", "--use_checkpoint"]).use_checkpoint
    bad = parser.parse_args(
        ["profile", "--model", "vit_nano", "--methods", "lora", "--lora_rank", "0"]
    )
    assert bad.func(bad) == 2
    assert "--lora_rank must be an integer >= 1" in capsys.readouterr().out


def test_meta_rows_count_params_and_flops_without_running(tmp_path):
    from aptune.commands.profile import size_methods

    rows = size_methods("vit_nano", ["prompt", "linear"], 4, 32, C, {"prompt_num_tokens": P})
    by = {r["method"]: r for r in rows}
    assert by["linear"]["fwd_gflops"] * 1e9 == pytest.approx(forward_flops(N, N))
    assert by["prompt"]["fwd_gflops"] * 1e9 == pytest.approx(forward_flops(N, N + P))
    head = 2 * D + D * C + C
    assert by["prompt"]["trainable_params"] == head + DEPTH * 2 * P * (D // 2)
    assert by["prompt"]["ckpt_bytes"] == 4 * by["prompt"]["trainable_params"]
    assert by["prompt"]["train_gflops"] > by["prompt"]["fwd_gflops"]
    argv = "--meta --model vit_nano --num_frames 4 --input_size 32 --nb_classes 4"
    assert (
        main([*argv.split(), "--methods", "prompt", "--token_sweep", "", "--out", str(tmp_path)])
        == 0
    )
    md = (tmp_path / "profile.md").read_text()
    assert "counted on meta tensors" in md and "| prompt | " in md and "inference s/clip" not in md
    assert (tmp_path / "profile.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # ~4 s idle: FlopCounterMode walks 40 wide blocks
def test_giant_sized_on_meta_in_closed_form():
    """VideoMAE V2 ViT-g: 1408 wide, 40 blocks, MLP 6144, patch 14 -> 2048 tokens."""
    from aptune.commands.profile import size_methods

    (row,) = size_methods("vit_giant_patch14_224", ["linear"], num_classes=400)
    d, n, hidden = 1408, 8 * 16 * 16, 6144
    conv = 2 * n * d * (3 * 2 * 14 * 14)
    block = 2 * n * (4 * d * d + 2 * d * hidden) + 2 * 2 * n * n * d
    assert row["fwd_gflops"] * 1e9 == pytest.approx(conv + 40 * block + 2 * d * 400)
    assert row["backbone_params"] == (3 * 2 * 14 * 14 + 1) * d + 40 * (
        4 * d * d + 2 * d * hidden + 8 * d + hidden
    )
