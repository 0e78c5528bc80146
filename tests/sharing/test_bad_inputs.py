"""What cannot be shared or loaded is one line naming the thing and the fix: a missing base,
a base with another sha256, a run that is not finished (no checkpoint, still training), an
unknown method, a PEFT folder, an adapter neither on disk nor in the Hub cache."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).parent))
from sharing_support import hf_videomae, make_run  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402
from aptune.commands.share import export_adapter  # noqa: E402
from aptune.config import ConfigError, RunConfig, save_config  # noqa: E402
from aptune.engine.run_lock import RunLock, RunLockedError  # noqa: E402
from aptune.sharing.errors import SharingError  # noqa: E402


def _one_line(exc: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, msg
    return msg


@pytest.fixture
def own_base(tmp_path) -> Path:
    """A base folder this test may change or remove."""
    folder = tmp_path / "base"
    hf_videomae(seed=3).save_pretrained(folder)
    return folder


@pytest.fixture
def adapter(own_base, tmp_path) -> Path:
    run = make_run(tmp_path / "run", "prompt", str(own_base))
    export_adapter(run, tmp_path / "a")
    return tmp_path / "a"


def test_missing_base_names_adapter_and_base(adapter, own_base, capsys):
    shutil.rmtree(own_base)
    with pytest.raises(SharingError) as e:
        aptune.load_run(adapter)
    _one_line(e, str(adapter), str(own_base.resolve()), "missing")
    assert main(["eval", str(adapter), "--output", str(adapter.parent / "ev")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing" in err


def test_base_with_another_sha256_is_refused(adapter, own_base):
    weights = own_base / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(SharingError) as e:
        aptune.load_run(adapter)
    _one_line(e, str(adapter), str(weights.resolve()), "sha256", "original")


def test_unknown_method_in_adapter_config(adapter):
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["methods"][0]["name"] = "prefix_tuning"
    cfg["run_config"]["transfer_type"] = "prefix_tuning"
    path.write_text(json.dumps(cfg))
    with pytest.raises(SharingError) as e:
        aptune.load_run(adapter)
    _one_line(e, str(path), "unknown method 'prefix_tuning'", "upgrade aptune")


def test_run_without_checkpoint_is_not_exported(tmp_path, capsys):
    run = tmp_path / "run"
    save_config(RunConfig.from_values({"model": "vit_nano", "output_dir": str(run)}), run)
    with pytest.raises(ConfigError) as e:
        export_adapter(run, tmp_path / "a")
    _one_line(e, str(run), "no complete", "train the run first")
    assert main(["export", str(run), "--format", "adapter", "--out", str(tmp_path / "b")]) == 2
    assert "train the run first" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_run_still_training_is_not_exported(own_base, tmp_path):
    run = make_run(tmp_path / "run", "lora", str(own_base))
    with RunLock(run):  # a live training holds the folder
        with pytest.raises(RunLockedError) as e:
            export_adapter(run, tmp_path / "a")
    _one_line(e, str(run), "still being trained", "once it has finished")
    assert not (tmp_path / "a").exists()
    export_adapter(run, tmp_path / "a")  # finished: exported
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_lock_of_a_dead_run_does_not_block_the_export(own_base, tmp_path):
    """A killed run leaves RUN/.lock behind; its holder is gone, so the run is exportable."""
    import socket
    import time

    run = make_run(tmp_path / "run", "linear", str(own_base))
    now = int(time.time())
    record = {"host": socket.gethostname(), "pid": 4_194_303, "pid_start": None,
              "started": now, "heartbeat": now, "token": "x"}  # fmt: skip
    (run / ".lock").write_text(json.dumps(record))
    export_adapter(run, tmp_path / "a")
    assert (tmp_path / "a" / "adapter_config.json").is_file()


def test_peft_folder_is_not_an_aptune_adapter(runs, tmp_path):
    from aptune.commands.share import export_peft

    export_peft(runs["lora"], tmp_path / "peft")
    with pytest.raises(SharingError) as e:
        aptune.load_run(tmp_path / "peft")
    _one_line(e, "not written by aptune", "peft")


def test_out_folder_with_other_files_is_not_replaced(runs, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(SharingError) as e:
        export_adapter(runs["linear"], out)
    _one_line(e, str(out), "other files")
    assert (out / "notes.txt").read_text() == "keep me"


def test_hub_adapter_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SharingError) as e:
        aptune.load_run("ORG/NOT-CACHED")
    _one_line(e, "ORG/NOT-CACHED", "HF_HUB_OFFLINE")
