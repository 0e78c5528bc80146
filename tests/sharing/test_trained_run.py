"""The round trip on runs ``aptune train`` really wrote (tests/conftest.py's tiny trained
run, then APT + LoRA fine-tuned from its weights): slow, as it trains."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
from engine_support import TINY  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def apt_lora_run(trained_run, square_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("apt_lora")
    flags = TINY + [
        "--transfer_type", "prompt+lora", "--finetune",
        str(trained_run / "checkpoint-best" / "model.safetensors"), "--data_path",
        str(square_data), "--output_dir", str(out), "--batch_size", "8", "--epochs", "1",
        "--lr", "0.05", "--disable_eval_during_finetuning", "--seed", "0",
    ]  # fmt: skip
    assert main(["train", *flags]) == 0
    return out


@pytest.mark.parametrize("which", ["trained", "apt_lora"])
def test_trained_runs_round_trip(trained_run, apt_lora_run, tmp_path, which, capsys):
    run = trained_run if which == "trained" else apt_lora_run
    out = tmp_path / "adapter"
    assert main(["export", str(run), "--format", "adapter", "--out", str(out)]) == 0
    x = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (aptune.load_run(out)(x) - aptune.load_run(run)(x)).abs().max()
    assert float(diff) <= 1e-5
    cfg = json.loads((out / "adapter_config.json").read_text())
    if which == "apt_lora":  # trained on a local aptune file: path + sha256, tensors only
        assert cfg["peft_type"] == "APT+LORA" and cfg["trainable_only"] is True
        assert list(cfg["base_model_sha256"]) == ["model.safetensors"]
        capsys.readouterr()
        assert main(["export", str(run), "--format", "peft", "--out", str(tmp_path / "p")]) == 2
        assert "--format adapter" in capsys.readouterr().err
    else:  # trained from random initialisation: no base, every tensor
        assert cfg["base_model_name_or_path"] is None and cfg["trainable_only"] is False
