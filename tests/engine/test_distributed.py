"""The seed's SSv2 launch command, shrunk only in paths, model size, frames, epochs and
batch, under a 2-process ``torch.distributed.launch`` (gloo on CPU)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aptune.models.vit import create_vit

REPO = Path(__file__).resolve().parents[2]


def write_videomae_pretrain_checkpoint(path: Path) -> None:
    """A VideoMAE pre-training checkpoint layout (encoder./decoder. keys, args, optimizer)."""
    import argparse

    enc = create_vit("vit_tiny", num_classes=0, num_frames=4, img_size=224).state_dict()
    sd = {f"encoder.{k}": v for k, v in enc.items() if not k.startswith("fc_norm")}
    sd["encoder.norm.weight"], sd["encoder.norm.bias"] = torch.ones(192), torch.zeros(192)
    sd["mask_token"] = torch.zeros(1, 1, 96)
    sd["encoder_to_decoder.weight"] = torch.randn(96, 192)
    sd["decoder.head.weight"] = torch.randn(1536, 96)
    sd["decoder.head.bias"] = torch.zeros(1536)
    args = argparse.Namespace(model="pretrain_videomae_tiny_patch16_224", mask_ratio=0.9)
    torch.save({"model": sd, "epoch": 799, "args": args, "optimizer": {}}, path)


@pytest.mark.slow
def test_seed_ssv2_command_under_two_process_launch(square_data, tmp_path):
    ckpt = tmp_path / "checkpoint.pth"
    write_videomae_pretrain_checkpoint(ckpt)
    out = tmp_path / "experiments" / "APT" / "SSV2"
    # the seed README's flag list; shrunk: paths, --model, --num_frames, --epochs, --batch_size*
    flags = f"""
    --model vit_tiny_patch16_224 --transfer_type prompt --prompt_start 0 --prompt_end 11
    --prompt_num_tokens 2 --prompt_dropout 0.1 --data_set SSV2 --nb_classes 4
    --data_path {square_data} --finetune {ckpt} --log_dir {out} --output_dir {out}
    --batch_size 2 --batch_size_val 2 --num_sample 2 --input_size 224 --short_side_size 224
    --save_ckpt_freq 10 --num_frames 4 --opt adamw --lr 0.05 --weight_decay 0.00001
    --epochs 1 --warmup_epochs 10 --test_num_segment 2 --test_num_crop 3 --dist_eval
    --pin_mem --enable_deepspeed --prompt_reparam --is_aa --aa rand-m4-n2-mstd0.2-inc1
    """.split()
    with socket.socket() as sock:  # not the launcher's fixed 29500, which anything may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node=2",
           f"--master_port={port}", str(REPO / "run_class_apt.py"), *flags,
           "--num_workers", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NCCL_P2P_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stderr and "DeepSpeed is not used" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    # 24 test videos x 2 segments x 3 crops, sharded over 2 ranks and merged once each
    assert metrics["test"]["num_videos"] == 24 and metrics["test"]["views_per_video"] == 6
    assert metrics["parameters"]["trainable"] == 12 * 2 * 2 * 64 + 12 * 2 * 2 + 2 * 192 + 4 * 193
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 24
    assert (out / "checkpoint-0000" / "COMPLETE").is_file()
