"""``--aug_device``: a training run whose clips are augmented in the main process.

There is no GPU here, so the device path runs on the CPU through the very code a CUDA run
uses (``augments_on_device`` is made to answer yes): workers decode and plan, the loop
moves the raw batch to the training device and augments it there.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from engine_support import apt_flags, assert_same_weights

from aptune.cli import main
from aptune.config import RunConfig
from aptune.engine import builders


def epoch_losses(out) -> list[float]:
    lines = (out / "log.txt").read_text().splitlines()
    return [json.loads(line)["train_loss"] for line in lines if line.strip()]


@pytest.fixture
def on_device(monkeypatch):
    monkeypatch.setattr(builders, "augments_on_device", lambda args, device: True)


def test_device_path_trains_like_the_worker_path(square_data, uninterrupted, tmp_path, on_device,
                                                 caplog):  # fmt: skip
    """Same item plans (RandAugment, erasing, num_sample 2, a worker process): the losses
    follow the worker path's run closely, and a second run is identical (reproducible)."""
    out = tmp_path / "device"
    with caplog.at_level(logging.INFO, logger="aptune"):
        assert main(["train", *apt_flags(square_data, out, workers=1)]) == 0
    assert "augmented on cpu in the main process" in caplog.text
    ours, theirs = epoch_losses(out), epoch_losses(uninterrupted)
    assert len(ours) == len(theirs) == 3
    for a, b in zip(ours, theirs, strict=True):
        assert abs(a - b) <= 0.05 * b, (ours, theirs)
    again = tmp_path / "again"
    assert main(["train", *apt_flags(square_data, again, workers=0)]) == 0
    assert_same_weights(out, again)  # and --num_workers does not change the clips


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_aug_device_cuda_without_a_gpu_is_a_one_line_error(square_data, tmp_path, capsys):
    assert (
        main(["train", *apt_flags(square_data, tmp_path, workers=0), "--aug_device", "cuda"]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aptune: error:") and "--aug_device cuda needs" in err[-1]


def test_auto_means_the_training_device():
    args = RunConfig.from_values({"aug_device": "auto"})
    assert builders.augments_on_device(args, torch.device("cuda", 0))
    assert not builders.augments_on_device(args, torch.device("cpu"))
    args.data.aug_device = "cpu"
    assert not builders.augments_on_device(args, torch.device("cuda", 0))
