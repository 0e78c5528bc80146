"""A V-JEPA 2 run shares as an adapter like a VideoMAE one: the attentive head (pooler and
classifier) travels in the adapter, the encoder comes from the recorded base."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
from sharing_support import make_run  # noqa: E402

import aptune  # noqa: E402
from aptune.commands.share import export_adapter  # noqa: E402
from aptune.engine.trained import open_run  # noqa: E402

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def vjepa2_base(tmp_path_factory) -> Path:
    """A tiny transformers V-JEPA 2 encoder folder with every tensor random."""
    torch.manual_seed(0)
    cfg = transformers.VJEPA2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, crop_size=32,
        frames_per_clip=4, pred_hidden_size=32, pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
    )  # fmt: skip
    model = transformers.VJEPA2Model(cfg).eval()
    g = torch.Generator().manual_seed(0)
    model.load_state_dict(
        {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in model.state_dict().items()}
    )
    folder = tmp_path_factory.mktemp("vjepa2_base") / "vjepa2-tiny"
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("transfer_type", ["prompt", "lora"])
def test_vjepa2_adapter_gives_the_runs_logits(vjepa2_base, tmp_path, transfer_type):
    run = make_run(tmp_path / "run", transfer_type, str(vjepa2_base),
                   model="vjepa2_vit_nano_patch16_256")  # fmt: skip
    out = tmp_path / "adapter"
    err = export_adapter(run, out)
    reference = open_run(run, device="cpu").model
    model = aptune.load_run(out, device="cpu")
    x = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        diff = float((model.eval()(x) - reference.eval()(x)).abs().max())
    assert diff <= 1e-5 and err <= 1e-5
    assert type(model).__name__ == "VJepa2" and model.pooler is not None
    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        names = set(f.keys())
    assert any(n.startswith("pooler.") for n in names) and "head.weight" in names
    assert not any(n.startswith("blocks.") and "lora" not in n for n in names)  # encoder: base
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["model"] == "vjepa2_vit_nano_patch16_256"
