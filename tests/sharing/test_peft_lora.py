"""``--format peft``: a LoRA run loads in ``peft`` on ``transformers``' VideoMAE with aptune's
logits; methods PEFT cannot express are refused with one line naming ``--format adapter``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from sharing_support import CLASSES, X, logits, make_run  # noqa: E402

from aptune.cli import main  # noqa: E402
from aptune.commands.share import export_peft  # noqa: E402
from aptune.engine.trained import open_run  # noqa: E402
from aptune.sharing.errors import SharingError  # noqa: E402

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _peft_logits(base: Path, folder: Path) -> torch.Tensor:
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(base)
    model = peft.PeftModel.from_pretrained(hf, folder).eval()
    with torch.no_grad():
        return model(pixel_values=X.permute(0, 2, 1, 3, 4)).logits  # HF: (B, T, C, H, W)


@pytest.mark.parametrize("targets", ["all", "qv"])
def test_peft_folder_gives_aptunes_logits(runs, hf_base, tmp_path, targets):
    run = runs["lora"] if targets == "all" else make_run(
        tmp_path / "run", "lora", str(hf_base), lora_rank=2, lora_alpha=5.0
    )  # fmt: skip
    out = tmp_path / "peft"
    checked = export_peft(run, out)  # the export's own check, on another batch
    assert checked is not None and checked <= 1e-4
    ours = logits(open_run(run, device="cpu").model, X)
    theirs = _peft_logits(hf_base, out)
    diff = float((theirs - ours).abs().max())
    print(f"\nPEFT round trip (lora_targets {targets}): max |logit difference| {diff:.2e}")
    assert diff <= 1e-4
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["modules_to_save"] == ["classifier", "fc_norm"]
    assert cfg["r"] == (4 if targets == "all" else 2)
    assert cfg["lora_alpha"] == (8.0 if targets == "all" else 5.0)
    assert cfg["base_model_name_or_path"] == str(hf_base.resolve())
    assert (out / "classes.txt").read_text().split() == CLASSES


def test_peft_model_without_the_adapter_differs(runs, hf_base):
    """The check above has teeth: the bare base gives other logits."""
    hf = transformers.VideoMAEForVideoClassification.from_pretrained(hf_base).eval()
    with torch.no_grad():
        bare = hf(pixel_values=X.permute(0, 2, 1, 3, 4)).logits
    ours = logits(open_run(runs["lora"], device="cpu").model, X)
    assert float((bare - ours).abs().max()) > 1e-2


@pytest.mark.parametrize("method", ["apt", "vpt", "adaptformer", "bitfit", "full"])
def test_methods_peft_cannot_express_are_refused(runs, tmp_path, capsys, method):
    out = tmp_path / "peft"
    assert main(["export", str(runs[method]), "--format", "peft", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--format adapter" in err and not out.exists()


def test_lora_on_a_base_transformers_cannot_load_is_refused(hf_base, tmp_path):
    """A base given as an aptune .safetensors file is no folder transformers reads."""
    from aptune.build import build_model
    from aptune.engine.weights import save_model_weights

    base = tmp_path / "base.safetensors"
    model = build_model("vit_nano_patch16_224", num_classes=4, transfer_type="linear",
                        num_frames=4, input_size=32, checkpoint=str(hf_base))  # fmt: skip
    save_model_weights(base, model, trainable_only=False)
    run = make_run(tmp_path / "run", "lora", str(base))
    with pytest.raises(SharingError, match="not a Hugging Face folder.*--format adapter"):
        export_peft(run, tmp_path / "peft")
