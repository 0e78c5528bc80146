"""Fixtures shared by engine and command tests: separable videos on disk and trained tiny
runs (session-scoped here, so every test module that uses them shares one training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "engine"))
from engine_support import TINY, apt_flags, write_dataset  # noqa: E402

from aptune.cli import main  # noqa: E402


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


@pytest.fixture(scope="session")
def uninterrupted(square_data, tmp_path_factory) -> Path:
    """The APT run every interrupted-and-resumed run must reproduce bit for bit."""
    out = tmp_path_factory.mktemp("uninterrupted")
    assert main(["train", *apt_flags(square_data, out, workers=1)]) == 0
    return out
