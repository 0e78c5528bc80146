"""Hub ids load from a Hub cache laid out in huggingface_hub's own format, fully offline.

The cache is written by the test as huggingface_hub writes it: ``models--ORG--NAME/``
with content-addressed ``blobs/``, ``snapshots/<commit>/<file>`` relative symlinks into
them and ``refs/<branch or tag>`` holding the commit. ``HF_HUB_OFFLINE=1`` and
``HF_HUB_CACHE`` point at it, and every socket connect fails the test.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import torch

import aptune
from aptune.models.checkpoint_io import CheckpointError
from aptune.models.hub import parse_hub_id

transformers = pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
TAGGED = "89abcdef0123456789abcdef0123456789abcdef"
SMALL = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
    num_frames=4, image_size=32, tubelet_size=2, num_labels=5,
)  # fmt: skip


def _hf_classifier(seed: int) -> torch.nn.Module:
    """A transformers classifier with random values in every tensor."""
    torch.manual_seed(seed)
    cfg = transformers.VideoMAEConfig(**SMALL)
    model = transformers.VideoMAEForVideoClassification(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    sd = model.state_dict()
    model.load_state_dict({k: torch.randn(v.shape, generator=g) * 0.2 for k, v in sd.items()})
    return model


def _saved_files(model: torch.nn.Module, folder: Path, as_bin: bool = False) -> dict[str, bytes]:
    model.save_pretrained(folder)
    files = {"config.json": (folder / "config.json").read_bytes()}
    if as_bin:  # what transformers 4.x wrote: the same tensors pickled by torch.save
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        files["pytorch_model.bin"] = (folder / "pytorch_model.bin").read_bytes()
    else:
        files["model.safetensors"] = (folder / "model.safetensors").read_bytes()
    return files


def lay_out_repo(
    cache: Path, repo: str, commit: str, files: dict[str, bytes], refs: tuple = ("main",)
) -> Path:
    """One repository in huggingface_hub's cache layout; returns the snapshot folder."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "blobs").mkdir(exist_ok=True)
    for name, data in files.items():
        if name.endswith((".safetensors", ".bin")):  # LFS files: sha256 etag
            etag = hashlib.sha256(data).hexdigest()
        else:  # regular git files: git blob sha1
            etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (root / "blobs" / etag).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", etag))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory):
    """Cache with ORG/NAME (safetensors; main + tag v1 at another commit), ORG/OLD (.bin)."""
    tmp = tmp_path_factory.mktemp("hub")
    cache, models = tmp / "cache", {}
    models["main"], models["v1"], models["bin"] = (_hf_classifier(s) for s in (0, 1, 2))
    lay_out_repo(cache, "ORG/NAME", COMMIT, _saved_files(models["main"], tmp / "a"))
    lay_out_repo(cache, "ORG/NAME", TAGGED, _saved_files(models["v1"], tmp / "b"), refs=("v1",))
    lay_out_repo(cache, "ORG/OLD", COMMIT, _saved_files(models["bin"], tmp / "c", as_bin=True))
    return cache, models


def use_offline_cache(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    """``HF_HUB_OFFLINE=1`` on ``cache``, and any socket connect fails the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Hub id touched the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.fixture(autouse=True)
def offline(hub, monkeypatch: pytest.MonkeyPatch):
    use_offline_cache(monkeypatch, hub[0])


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def _hf_logits(hf: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF takes (B, T, C, H, W)


X = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(
    "source, which",
    [
        ("ORG/NAME", "main"),
        ("hf://ORG/NAME", "main"),
        (f"ORG/NAME@{COMMIT}", "main"),
        ("ORG/NAME@v1", "v1"),
        ("hf://ORG/NAME@v1", "v1"),
        ("ORG/OLD", "bin"),  # pytorch_model.bin, read with weights_only
    ],
)
def test_hub_id_loads_cached_snapshot_like_transformers(hub, source: str, which: str) -> None:
    model = aptune.build_model(
        "vit_base_patch16_224", num_classes=5, transfer_type="linear", checkpoint=source
    ).eval()
    assert (model.embed_dim, model.depth, model.num_frames) == (64, 2, 4)  # from config.json
    torch.testing.assert_close(_logits(model, X), _hf_logits(hub[1][which], X))


def test_safetensors_preferred_over_bin(hub, tmp_path: Path) -> None:
    """A repo with both files: the .bin holds other weights and must not be read."""
    files = _saved_files(hub[1]["main"], tmp_path / "st")
    other = _saved_files(hub[1]["v1"], tmp_path / "bin", as_bin=True)
    files["pytorch_model.bin"] = other["pytorch_model.bin"]
    lay_out_repo(hub[0], "ORG/BOTH", COMMIT, files)
    model = aptune.build_model(num_classes=5, transfer_type="linear", checkpoint="ORG/BOTH").eval()
    torch.testing.assert_close(_logits(model, X), _hf_logits(hub[1]["main"], X))


@pytest.mark.parametrize(
    "source, needles",
    [
        ("ORG/MISSING", ["not in the cache", "HF_HUB_OFFLINE", "hf download ORG/MISSING"]),
        ("ORG/NAME@v9", ["revision v9", "--revision v9"]),
    ],
)
def test_not_cached_is_one_line_naming_the_id_and_the_fix(hub, source: str, needles) -> None:
    with pytest.raises(CheckpointError) as err:
        aptune.build_model("vit_nano", num_classes=5, checkpoint=source)
    msg = str(err.value)
    assert "\n" not in msg and str(hub[0]) in msg
    for needle in needles:
        assert needle in msg


def test_local_path_wins_over_hub_id(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder ./ORG/NAME (another model) is what loads, not the cached repository."""
    hub[1]["v1"].save_pretrained(tmp_path / "ORG" / "NAME")
    monkeypatch.chdir(tmp_path)
    model = aptune.build_model(num_classes=5, transfer_type="linear", checkpoint="ORG/NAME").eval()
    torch.testing.assert_close(_logits(model, X), _hf_logits(hub[1]["v1"], X))


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("MCG-NJU/videomae-base", ("MCG-NJU/videomae-base", None)),
        ("hf://MCG-NJU/videomae-base@refs/pr/3", ("MCG-NJU/videomae-base", "refs/pr/3")),
        ("OpenGVLab/VideoMAEv2-Base@main", ("OpenGVLab/VideoMAEv2-Base", "main")),
        ("runs/checkpoint-99.pth", None),  # a missing file, not a repository
        ("output/model.safetensors", None),
        ("./ORG/NAME", None),
        ("/abs/ORG/NAME", None),
        ("checkpoint.pth", None),
        ("a/b/c", None),
    ],
)
def test_parse_hub_id(text: str, parsed) -> None:
    assert parse_hub_id(text) == parsed


def test_bad_hf_uri_is_refused() -> None:
    with pytest.raises(CheckpointError, match="hf://ORG/NAME"):
        parse_hub_id("hf://just-a-name")


def test_missing_local_file_keeps_the_path_message(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or folder"):
        aptune.build_model("vit_nano", num_classes=5, checkpoint=str(tmp_path / "x.pth"))


def test_sharded_safetensors_repo_fetches_every_shard(hub, tmp_path: Path) -> None:
    import json

    from safetensors.torch import load_file, save_file

    files = _saved_files(hub[1]["v1"], tmp_path / "full")
    sd = load_file(tmp_path / "full" / "model.safetensors")
    keys = sorted(sd)
    shards = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    out = {"config.json": files["config.json"]}
    for name, part in shards.items():
        save_file({k: sd[k] for k in part}, str(tmp_path / name), metadata={"format": "pt"})
        out[name] = (tmp_path / name).read_bytes()
    index = {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}
    out["model.safetensors.index.json"] = json.dumps(index).encode()
    lay_out_repo(hub[0], "ORG/SHARDED", COMMIT, out)
    model = aptune.build_model(num_classes=5, transfer_type="linear", checkpoint="ORG/SHARDED")
    torch.testing.assert_close(_logits(model.eval(), X), _hf_logits(hub[1]["v1"], X))
    (hub[0] / "models--ORG--SHARDED" / "snapshots" / COMMIT / shards.popitem()[0]).unlink()
    with pytest.raises(CheckpointError, match="not in the cache"):
        aptune.build_model(num_classes=5, checkpoint="ORG/SHARDED")


def test_finetune_flag_takes_a_hub_id(hub) -> None:
    """``aptune train --finetune ORG/NAME``: nothing before build_model rejects the id."""
    from aptune.cli.train import parse_train_args
    from aptune.engine.builders import build_run_model
    from aptune.engine.distributed import DistInfo

    argv = "--finetune hf://ORG/NAME@v1 --nb_classes 5 --transfer_type linear --drop_path 0"
    argv += " --num_frames 4 --input_size 32"
    args = parse_train_args(argv.split())
    model = build_run_model(args, DistInfo()).eval()
    torch.testing.assert_close(_logits(model, X), _hf_logits(hub[1]["v1"], X))


def test_hf_home_locates_the_cache_when_hf_hub_cache_is_unset(hub, tmp_path, monkeypatch) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "hub").symlink_to(hub[0], target_is_directory=True)
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    model = aptune.build_model(num_classes=5, transfer_type="linear", checkpoint="ORG/NAME")
    torch.testing.assert_close(_logits(model.eval(), X), _hf_logits(hub[1]["main"], X))
