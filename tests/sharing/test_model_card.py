"""The adapter folder's README.md is a Hub model card whose YAML header parses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from sharing_support import METRICS  # noqa: E402

from aptune.commands.share import export_adapter, export_peft  # noqa: E402


def header_of(readme: Path) -> dict:
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, _, body = text[4:].partition("\n---\n")
    assert body.strip(), "the card has a body"
    return yaml.safe_load(head)


def test_adapter_card_header(runs, tmp_path):
    out = tmp_path / "a"
    export_adapter(runs["apt"], out)
    h = header_of(out / "README.md")
    assert h["library_name"] == "aptune" and h["pipeline_tag"] == "video-classification"
    assert {"aptune", "attention-prompt-tuning"} <= set(h["tags"])
    assert h["datasets"] == ["SSV2"] and h["metrics"] == ["accuracy"]
    assert "base_model" not in h  # a local base is named in the body, not as a Hub link
    (result,) = h["model-index"][0]["results"]
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values == {"top-1 accuracy": METRICS["test"]["top1"], "top-5 accuracy": 100.0}
    text = (out / "README.md").read_text()
    assert "apt prompts" in text and "sha256" in text  # parameter report, base


def test_hub_base_is_the_cards_base_model(runs, tmp_path):
    """A run on a Hub id names it as ``base_model`` (the Hub links the two)."""
    out = tmp_path / "a"
    export_adapter(runs["full"], out)
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    from aptune.sharing.model_card import card_header

    cfg.update(base_model_name_or_path="MCG-NJU/videomae-base", base_model_sha256=None)
    assert card_header(cfg, None, "x")["base_model"] == "MCG-NJU/videomae-base"
    assert "full fine-tuning" in (out / "README.md").read_text()


def test_odd_class_and_dataset_names_keep_the_header_valid(hf_base, tmp_path):
    from sharing_support import make_run

    run = make_run(tmp_path / "run", "linear", str(hf_base), data_set="HMDB51")
    (run / "classes.txt").write_text('a: b\n"quoted"\n- dash\n#hash\n')
    (run / "metrics.json").write_text("{}")  # no test metrics
    export_adapter(run, tmp_path / "a")
    h = header_of(tmp_path / "a" / "README.md")
    assert h["datasets"] == ["HMDB51"] and "model-index" not in h
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["classes"] == ["a: b", '"quoted"', "- dash", "#hash"]


def test_peft_card_header(runs, tmp_path):
    export_peft(runs["lora"], tmp_path / "p")
    h = header_of(tmp_path / "p" / "README.md")
    assert h["library_name"] == "peft" and h["pipeline_tag"] == "video-classification"
    assert "PeftModel.from_pretrained" in (tmp_path / "p" / "README.md").read_text()
