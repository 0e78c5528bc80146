"""Fixtures for engine/CLI tests: separable videos on disk and a trained tiny run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from simple_videos import write_dataset  # noqa: E402

from aptune.cli import main  # noqa: E402

#: flags shared by the engine tests: a tiny ViT on 8-frame 32-px clips, 4 classes
TINY = [
    "--model", "vit_nano", "--data_set", "SSV2", "--nb_classes", "4", "--num_frames", "8",
    "--input_size", "32", "--short_side_size", "32", "--num_workers", "0", "--no_progress",
    "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--drop_path", "0",
    "--test_num_segment", "2", "--test_num_crop", "2", "--num_sample", "1",
]  # fmt: skip


@pytest.fixture(scope="session")
def square_data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("squares"), {"train": 16, "val": 4, "test": 6})


@pytest.fixture(scope="session")
def trained_run(square_data, tmp_path_factory) -> Path:
    """A from-scratch tiny ViT trained for a few epochs (actual lr 1e-2)."""
    out = tmp_path_factory.mktemp("trained")
    flags = TINY + [
        "--transfer_type", "random", "--data_path", str(square_data), "--output_dir", str(out),
        "--batch_size", "8", "--epochs", "4", "--warmup_epochs", "1", "--lr", "0.32",
        "--weight_decay", "0.01", "--save_ckpt_freq", "2", "--seed", "0",
    ]  # fmt: skip
    assert main(["train", *flags]) == 0
    return out
