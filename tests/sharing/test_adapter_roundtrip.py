"""export -> load -> the run's logits, for every method, from a folder and from the Hub cache.

The Hub cache is laid out by the test in huggingface_hub's own format
(``tests/models/test_hub.py: lay_out_repo``) with ``HF_HUB_OFFLINE=1`` and every socket
connect failing the test: the base is ``ORG/VIDEOMAE`` there, each adapter ``ORG/<method>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from sharing_support import CLASSES, METHODS, X, logits, make_run  # noqa: E402
from test_hub import lay_out_repo, use_offline_cache  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402
from aptune.commands.share import export_adapter  # noqa: E402
from aptune.engine.trained import open_run  # noqa: E402
from aptune.sharing.base_source import sha256_of  # noqa: E402

BASE_COMMIT = "1111111111111111111111111111111111111111"
ADAPTER_COMMIT = "2222222222222222222222222222222222222222"
#: max |logit difference| per method and source, printed at the end of the module
MEASURED: dict[str, float] = {}


def _tensor_names(path: Path) -> tuple[set[str], dict]:
    with safe_open(str(path), framework="pt") as f:
        return set(f.keys()), f.metadata()


@pytest.mark.parametrize("method", list(METHODS))
def test_adapter_folder_gives_the_runs_logits(runs, hf_base, tmp_path, method):
    run = runs[method]
    out = tmp_path / "adapter"
    err = export_adapter(run, out)
    reference = open_run(run, device="cpu").model
    model = aptune.load_run(out, device="cpu")
    diff = float((logits(model, X) - logits(reference, X)).abs().max())
    MEASURED[f"{method} (folder)"] = diff
    assert diff <= 1e-5 and err <= 1e-5
    assert model.class_names == CLASSES and model.run_config["finetune"] == str(hf_base)

    cfg = json.loads((out / "adapter_config.json").read_text())
    names, meta = _tensor_names(out / "adapter_model.safetensors")
    trained = {n for n, p in reference.named_parameters() if p.requires_grad}
    if method == "full":  # the adapter is the whole model
        assert cfg["peft_type"] == "FULL" and names == set(reference.state_dict())
        assert meta["trainable_only"] == "false"
    else:
        assert names == trained and meta["trainable_only"] == "true"
    assert cfg["library_name"] == "aptune" and cfg["classes"] == CLASSES
    assert cfg["base_model_name_or_path"] == str(hf_base.resolve())
    assert cfg["base_model_sha256"] == {
        "model.safetensors": sha256_of(hf_base / "model.safetensors")
    }
    assert (cfg["num_frames"], cfg["input_size"], cfg["test_views"]) == (
        4, 32, {"segments": 2, "crops": 1},
    )  # fmt: skip
    assert cfg["sampling"]["mode"] == "segment" and cfg["methods"][0]["name"] == METHODS[method][0]
    assert "data_path" not in cfg["run_config"] and "finetune" not in cfg["run_config"]
    assert (out / "classes.txt").read_text().split() == CLASSES


def test_run_without_a_base_shares_every_tensor(tmp_path):
    """No --finetune: the frozen backbone exists only in the run, so the adapter holds it."""
    run = make_run(tmp_path / "run", "prompt", "")
    out = tmp_path / "adapter"
    export_adapter(run, out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] is None and cfg["trainable_only"] is False
    reference = open_run(run, device="cpu").model
    names, _ = _tensor_names(out / "adapter_model.safetensors")
    assert names == set(reference.state_dict())
    diff = float((logits(aptune.load_run(out), X) - logits(reference, X)).abs().max())
    MEASURED["apt without a base (folder)"] = diff
    assert diff <= 1e-5


def test_adapter_options_are_recorded(runs, tmp_path):
    out = tmp_path / "apt"
    export_adapter(runs["apt"], out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "APT" and cfg["methods"][0]["options"]["num_tokens"] == 3
    assert cfg["parameters"]["trainable"] < cfg["parameters"]["total"]


def test_cli_export_then_predict_path_opens_the_adapter(runs, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["export", str(runs["lora"]), "--format", "adapter", "--out", str(out)]) == 0
    assert "max logit difference" in capsys.readouterr().out
    trained = open_run(out, device="cpu")  # what predict / extract / timeline call
    assert trained.class_names == CLASSES and trained.views_per_video == 2
    # exporting again replaces the folder in place
    assert main(["export", str(runs["lora"]), "--format", "adapter", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "classes.txt",
    ]  # fmt: skip


# -- the same through the Hub cache, offline ----------------------------------------------


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


@pytest.fixture(scope="module")
def hub(hf_base, tmp_path_factory):
    """A Hub cache with the base ``ORG/VIDEOMAE`` and one adapter repository per method
    (``ORG/<method>``) exported from runs whose ``--finetune`` is the Hub id."""
    tmp = tmp_path_factory.mktemp("hub")
    cache = tmp / "cache"
    lay_out_repo(cache, "ORG/VIDEOMAE", BASE_COMMIT, _files(hf_base))
    refs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_HUB_CACHE", str(cache))
        for key, (ttype, flags) in METHODS.items():
            run = make_run(tmp / "runs" / key, ttype, "ORG/VIDEOMAE", **flags)
            export_adapter(run, tmp / "adapters" / key)
            lay_out_repo(cache, f"ORG/{key}", ADAPTER_COMMIT, _files(tmp / "adapters" / key))
            refs[key] = logits(open_run(run, device="cpu").model, X)
    return cache, refs, tmp


@pytest.fixture
def offline(hub, monkeypatch):
    use_offline_cache(monkeypatch, hub[0])


@pytest.mark.parametrize("method", list(METHODS))
def test_hub_adapter_gives_the_runs_logits_offline(hub, offline, method):
    cfg = json.loads((hub[2] / "adapters" / method / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "ORG/VIDEOMAE" and cfg["revision"] == BASE_COMMIT
    assert cfg["base_model_sha256"] is None
    for source in (f"ORG/{method}", f"hf://ORG/{method}@{ADAPTER_COMMIT}"):
        model = aptune.load_run(source, device="cpu")
        diff = float((logits(model, X) - hub[1][method]).abs().max())
        MEASURED[f"{method} (Hub)"] = diff
        assert diff <= 1e-5 and model.class_names == CLASSES


def test_hub_id_through_a_path_like_the_cli_makes(hub, offline):
    """``Path("hf://ORG/lora")`` prints ``hf:/ORG/lora``: still the Hub adapter."""
    trained = open_run(Path("hf://ORG/lora"), device="cpu")
    torch.testing.assert_close(logits(trained.model, X), hub[1]["lora"], atol=1e-5, rtol=0)


def test_measured_differences_are_reported(capsys):
    """Prints the round trips' max logit differences (``pytest -s`` shows them)."""
    with capsys.disabled():
        for key, diff in sorted(MEASURED.items()):
            print(f"\nadapter round trip {key}: max |logit difference| {diff:.2e}", end="")
    assert all(v <= 1e-5 for v in MEASURED.values())


# -- the commands that take --run, on an adapter ---------------------------------------------


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """One test video per class and its list (``tests/engine/engine_support.py``)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "engine"))
    from engine_support import write_dataset

    return write_dataset(tmp_path_factory.mktemp("videos"), {"test": 1}, frames=8, size=32)


def test_predict_eval_timeline_and_extract_take_an_adapter(runs, videos, tmp_path, capsys):
    out = tmp_path / "adapter"
    export_adapter(runs["apt"], out)
    video = sorted((videos / "videos" / "test").glob("*.mp4"))[0]
    capsys.readouterr()
    assert main(["predict", "--run", str(out), str(video), "--json", "--no_progress"]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert main(["predict", "--run", str(runs["apt"]), str(video), "--json", "--no_progress"]) == 0
    theirs = json.loads(capsys.readouterr().out)
    assert ours[0]["topk"] == theirs[0]["topk"] and ours[0]["topk"][0][1] in CLASSES
    results = tmp_path / "eval"
    assert main(["eval", str(out), "--data_path", str(videos), "--output", str(results),
                 "--num_workers", "0"]) == 0  # fmt: skip
    assert (results / "eval_predictions.jsonl").is_file()
    tl = tmp_path / "timeline"
    args = ["predict", "--run", str(out), str(video), "--timeline", "--out", str(tl)]
    assert main([*args, "--no_progress"]) == 0
    assert any(tl.glob("*.timeline.json"))
    feats = tmp_path / "feats.safetensors"
    assert main(["extract", str(video), "--run", str(out), "--out", str(feats)]) == 0
    assert feats.is_file()
