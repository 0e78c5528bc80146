"""``aptune extract``'s resumable parts cannot lie: a changed part is named and recomputed."""

from __future__ import annotations

import logging
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import aptune.commands.extract as ex
from aptune.commands.extract import extract_features
from aptune.data.errors import DataError
from aptune.engine.trained import open_run


def _videos(square_data: Path) -> list[str]:
    return sorted(str(p) for p in (square_data / "videos" / "test").glob("*.mp4"))[:4]


class Stopped(Exception):
    """Stands for a killed run (raised where the second chunk would start)."""


def _stop_at_second_chunk(monkeypatch) -> dict[str, int]:
    """The first run stops after one finished part; then counts the chunks computed."""
    state = {"computed": 0, "stop_at": 2}
    real = ex._run_chunk

    def run(*args, **kw):
        state["computed"] += 1
        if state["computed"] == state["stop_at"]:
            raise Stopped
        return real(*args, **kw)

    monkeypatch.setattr(ex, "_run_chunk", run)
    return state


def _flip_data_middle(part: Path) -> None:
    """Same size, one byte of tensor data changed (the header stays valid JSON)."""
    data = bytearray(part.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    data[(start + len(data)) // 2] ^= 0x40
    part.write_bytes(bytes(data))


def _features(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _interrupted_then_resumed(trained_run, square_data, tmp_path, monkeypatch, damage):
    videos, out = _videos(square_data), tmp_path / "feats.safetensors"
    state = _stop_at_second_chunk(monkeypatch)
    trained = open_run(trained_run, "last")
    with pytest.raises(Stopped):
        extract_features(trained, videos, out, chunk=2, progress=False)
    part = tmp_path / "feats.safetensors.parts" / "part-000000.safetensors"
    damage(part)
    state.update(computed=0, stop_at=-1)  # count the chunks computed from here
    n, failed = extract_features(trained, videos, out, chunk=2, progress=False)
    assert n == 4 and failed == []
    single = tmp_path / "single.safetensors"
    extract_features(trained, videos, single, chunk=2, progress=False)
    resumed, fresh = _features(out), _features(single)
    assert resumed.keys() == fresh.keys()
    for k in fresh:
        assert torch.equal(resumed[k], fresh[k]), k
    return state["computed"], part


def test_flipped_bytes_in_a_part_are_named_and_recomputed(trained_run, square_data, tmp_path,
                                                          monkeypatch, caplog):  # fmt: skip
    caplog.set_level(logging.WARNING, logger="aptune")
    computed, part = _interrupted_then_resumed(
        trained_run, square_data, tmp_path, monkeypatch, _flip_data_middle
    )
    assert computed == 2 + 2  # both chunks of the resume (part 0 again), then the single run
    lines = [r.getMessage() for r in caplog.records if "extract part" in r.getMessage()]
    assert len(lines) == 1 and str(part) in lines[0] and "sha256 differs" in lines[0]


def test_part_of_an_earlier_version_is_recomputed(trained_run, square_data, tmp_path,
                                                  monkeypatch, caplog):  # fmt: skip
    def strip_hash(part: Path) -> None:  # what aptune wrote before parts carried a sha256
        tensors = _features(part)
        with safe_open(str(part), "pt") as f:
            failed = f.metadata()["failed"]
        save_file(tensors, str(part), metadata={"failed": failed})

    caplog.set_level(logging.WARNING, logger="aptune")
    computed, _ = _interrupted_then_resumed(
        trained_run, square_data, tmp_path, monkeypatch, strip_hash
    )
    assert computed == 4 and "no sha256" in caplog.text


def test_sound_parts_are_reused_and_a_bad_manifest_is_one_line(trained_run, square_data,
                                                               tmp_path, monkeypatch):  # fmt: skip
    computed, part = _interrupted_then_resumed(
        trained_run, square_data, tmp_path, monkeypatch, lambda part: None
    )
    assert computed == 1 + 2  # the resume computed the second chunk only
    parts = tmp_path / "x.safetensors.parts"
    parts.mkdir()
    (parts / "manifest.json").write_bytes(b"\xff{not json")
    with pytest.raises(DataError, match="manifest.json: unreadable"):
        extract_features(open_run(trained_run, "last"), _videos(square_data),
                         tmp_path / "x.safetensors", progress=False)  # fmt: skip
