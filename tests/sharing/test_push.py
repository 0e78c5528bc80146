"""``aptune push``: everything up to the upload, with ``huggingface_hub.HfApi`` replaced by a
recorder and every socket connect failing the test (nothing reaches the network)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from aptune.cli import main

REPO = "ORG/NAME"


class FakeApi:
    """Records the calls ``hub_push.upload`` makes and what the uploaded folder held."""

    calls: list[tuple[str, tuple, dict]] = []
    uploaded: dict[str, bytes] = {}
    fail_with: Exception | None = None

    def __init__(self, token: str | None = None) -> None:
        self.calls.append(("init", (), {"token": token}))

    def create_repo(self, *args, **kwargs):
        self.calls.append(("create_repo", args, kwargs))

    def create_branch(self, *args, **kwargs):
        self.calls.append(("create_branch", args, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", (), kwargs))
        if self.fail_with is not None:
            raise self.fail_with
        folder = Path(kwargs["folder_path"])  # a temporary folder: read it now
        FakeApi.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}
        return "https://huggingface.co/ORG/NAME/commit/abc"


@pytest.fixture(autouse=True)
def hub_client(monkeypatch):
    import huggingface_hub

    FakeApi.calls, FakeApi.uploaded, FakeApi.fail_with = [], {}, None
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("aptune push touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _by_name(name: str) -> list[tuple[tuple, dict]]:
    return [(a, k) for n, a, k in FakeApi.calls if n == name]


def test_push_uploads_the_adapter_folder(runs, capsys):
    args = ["push", str(runs["apt"]), "--repo", REPO, "--private", "--revision", "dev"]
    assert main(args) == 0
    assert _by_name("init") == [((), {"token": "hf_test_token"})]
    assert _by_name("create_repo") == [
        ((REPO,), {"repo_type": "model", "private": True, "exist_ok": True})
    ]
    assert _by_name("create_branch") == [
        ((REPO,), {"branch": "dev", "repo_type": "model", "exist_ok": True})
    ]
    (_, upload), = _by_name("upload_folder")  # fmt: skip
    assert upload["repo_id"] == REPO and upload["revision"] == "dev"
    assert upload["repo_type"] == "model"
    assert sorted(FakeApi.uploaded) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "classes.txt",
    ]  # fmt: skip
    assert f'aptune.load_run("{REPO}")' in FakeApi.uploaded["README.md"].decode()
    assert json.loads(FakeApi.uploaded["adapter_config.json"])["peft_type"] == "APT"
    assert "ORG/NAME: uploaded" in capsys.readouterr().out


def test_push_to_main_creates_no_branch(runs):
    assert main(["push", str(runs["lora"]), "--repo", f"hf://{REPO}"]) == 0
    assert _by_name("create_branch") == []
    assert _by_name("create_repo")[0][1]["private"] is False
    assert _by_name("upload_folder")[0][1]["revision"] is None


def test_token_from_the_login_cache(runs, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_cached")
    assert main(["push", str(runs["linear"]), "--repo", REPO]) == 0
    assert _by_name("init") == [((), {"token": "hf_cached"})]


def _fails(args: list[str], capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err, err
    return err


def test_no_token_says_how_to_log_in(runs, monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN")
    err = _fails(["push", str(runs["apt"]), "--repo", REPO], capsys)
    assert "no Hugging Face token" in err and "hf auth login" in err and "HF_TOKEN" in err
    assert FakeApi.calls == []


def test_offline_mode_says_to_unset_it(runs, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _fails(["push", str(runs["apt"]), "--repo", REPO], capsys)
    assert "HF_HUB_OFFLINE" in err and FakeApi.calls == []


def test_refused_upload_is_one_line(runs, capsys):
    from huggingface_hub.errors import HfHubHTTPError

    class Response:  # what HfHubHTTPError reads of an httpx response
        status_code = 403
        headers: dict = {}
        request = None

    FakeApi.fail_with = HfHubHTTPError("403 Forbidden: no write access", response=Response())
    err = _fails(["push", str(runs["apt"]), "--repo", REPO], capsys)
    assert "refused the upload to ORG/NAME" in err and "HTTP 403" in err and "write" in err


def test_repo_with_a_revision_is_refused(runs, capsys):
    err = _fails(["push", str(runs["apt"]), "--repo", "ORG/NAME@dev"], capsys)
    assert "--revision" in err and FakeApi.calls == []
