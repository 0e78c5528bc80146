"""--decode_cache: frames identical to decoding, each video decoded once, safe on disk."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from aptune.data import DataConfig, VideoDecodeError, build_dataset, collate_clips
from aptune.data import frame_cache as fc
from aptune.data.decode import read_frames
from aptune.data.frame_cache import FrameCache

SMALL = {"num_frames": 8, "sampling_rate": 2, "input_size": 32, "short_side_size": 40}


@pytest.fixture
def count_decodes(monkeypatch) -> list[str]:
    """Paths decoded through the real backends (the cache calls `open_video` to fill)."""
    opened: list[str] = []
    real = fc.open_video

    def counting(path, backend="auto", threads=1):
        opened.append(os.fspath(path))
        return real(path, backend, threads)

    monkeypatch.setattr(fc, "open_video", counting)
    return opened


@pytest.mark.parametrize("ext", ["avi", "mp4", "webm"])
def test_cached_frames_equal_decoded_frames(tmp_path, coded_videos, ext, count_decodes):
    cache = FrameCache(tmp_path / "cache")
    video = coded_videos[ext]
    indices = [0, 5, 5, 13, 47, 2]
    first = cache.open(video).get_frames(indices)
    second = cache.open(video)
    assert second.num_frames == 48
    np.testing.assert_array_equal(first, read_frames(video, indices))
    np.testing.assert_array_equal(second.get_frames(indices), first)
    assert count_decodes == [str(video)]  # the second open read the cache only
    entries = list((tmp_path / "cache").rglob("*"))
    assert [p.suffix for p in entries if p.is_file()] == [".npy"]  # no temporary left


def test_replaced_video_is_decoded_again(tmp_path, coded_videos, count_decodes):
    video = shutil.copy(coded_videos["mp4"], tmp_path / "v.mp4")
    cache = FrameCache(tmp_path / "cache")
    old_entry = cache.entry_path(video)
    cache.open(video)
    shutil.copy(coded_videos["avi"], video)  # same name, new content
    os.utime(video, ns=(1, 1))
    assert cache.entry_path(video) != old_entry
    cache.open(video)
    assert count_decodes == [str(video)] * 2


def test_unreadable_entry_is_replaced(tmp_path, coded_videos, caplog, count_decodes):
    cache = FrameCache(tmp_path / "cache")
    video = coded_videos["avi"]
    entry = cache.entry_path(video)
    entry.parent.mkdir(parents=True)
    entry.write_bytes(b"\x93NUMPY garbage")  # e.g. a disk that lost the tail of a file
    frames = cache.open(video).get_frames([3])
    np.testing.assert_array_equal(frames, read_frames(video, [3]))
    assert "unreadable" in caplog.text and len(count_decodes) == 1
    assert np.load(entry).shape == (48, 32, 64, 3)


def test_bad_videos_still_raise(tmp_path, bad_videos):
    cache = FrameCache(tmp_path / "cache")
    for name, message in [("corrupt", "corrupt.mp4"), ("empty", "0 bytes"),
                          ("missing", "not found")]:  # fmt: skip
        with pytest.raises(VideoDecodeError, match=message):
            cache.open(bad_videos[name]).get_frames([0])
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_unwritable_folder_is_one_line_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match=r"--decode_cache .*file/sub: cannot write there"):
        FrameCache(blocker / "sub")


def test_write_failure_goes_on_uncached(tmp_path, coded_videos, monkeypatch, caplog):
    cache = FrameCache(tmp_path / "cache")

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fc.np, "save", full_disk)
    frames = cache.open(coded_videos["mp4"]).get_frames([7])
    np.testing.assert_array_equal(frames, read_frames(coded_videos["mp4"], [7]))
    assert "going on uncached" in caplog.text
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_dataset_with_cache_gives_the_same_clips(tmp_path, action_data, count_decodes):
    cfg = DataConfig(data_set="SSV2", data_path=action_data["data_path"], nb_classes=3, **SMALL)
    cached = replace(cfg, decode_cache=str(tmp_path / "cache"))
    for split in ("val", "test"):
        plain, fast = build_dataset(split, cfg), build_dataset(split, cached)
        for i in range(len(plain)):
            assert torch.equal(plain[i].clips, fast[i].clips)
    train = build_dataset("train", cached)
    torch.manual_seed(3)
    a = collate_clips([train[i] for i in range(len(train))])
    torch.manual_seed(3)
    b = collate_clips([build_dataset("train", cfg)[i] for i in range(len(train))])
    assert torch.equal(a.clips, b.clips) and a.labels.tolist() == b.labels.tolist()
    videos = len(build_dataset("train", cfg)) + 3 + 3  # train + val + test videos
    assert len(set(count_decodes)) == videos == len(count_decodes)  # each decoded once


def test_train_flag_reaches_the_dataset(tmp_path):
    from aptune.cli.train import parse_train_args
    from aptune.engine.builders import data_config

    args = parse_train_args(["--decode_cache", str(tmp_path / "c")])
    assert data_config(args).decode_cache == str(tmp_path / "c")
    assert data_config(parse_train_args([])).decode_cache is None


def _flip_middle(entry, n: int = 16) -> None:
    """Bytes changed on disk without a change in size (what a truncation check misses)."""
    data = bytearray(entry.read_bytes())
    mid = len(data) // 2
    data[mid : mid + n] = bytes(b ^ 0xFF for b in data[mid : mid + n])
    entry.write_bytes(bytes(data))


def test_flipped_bytes_are_noticed_and_decoded_again(tmp_path, coded_videos, caplog,
                                                     count_decodes):  # fmt: skip
    cache = FrameCache(tmp_path / "cache")
    video = coded_videos["mp4"]
    entry = cache.entry_path(video)
    cache.open(video)
    size = entry.stat().st_size
    _flip_middle(entry)
    assert entry.stat().st_size == size
    everything = list(range(48))
    frames = cache.open(video).get_frames(everything)
    np.testing.assert_array_equal(frames, read_frames(video, everything))  # a fresh decode
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "checksum differs" in warnings[0]
    assert str(video) in warnings[0] and str(entry) in warnings[0]
    assert count_decodes == [str(video)] * 2
    caplog.clear()
    again = FrameCache(tmp_path / "cache").open(video).get_frames(everything)  # rewritten
    np.testing.assert_array_equal(again, frames)
    assert count_decodes == [str(video)] * 2 and not caplog.records
    actual, stored = fc.entry_checksum(entry)
    assert actual == stored and entry.stat().st_size == size


def test_flipped_footer_or_header_is_noticed(tmp_path, coded_videos, caplog, count_decodes):
    cache = FrameCache(tmp_path / "cache")
    video = coded_videos["avi"]
    entry = cache.entry_path(video)
    for offset in (20, -3):  # the .npy header (its shape text), the stored CRC
        cache.open(video)
        data = bytearray(entry.read_bytes())
        data[offset] ^= 0x01
        entry.write_bytes(bytes(data))
        np.testing.assert_array_equal(cache.open(video).get_frames([9]), read_frames(video, [9]))
    assert len(count_decodes) == 3 and caplog.text.count("decoding again") == 2


def test_entry_of_an_earlier_version_is_decoded_again_once(tmp_path, coded_videos, caplog,
                                                           count_decodes):  # fmt: skip
    cache = FrameCache(tmp_path / "cache")
    video = coded_videos["webm"]
    entry = cache.entry_path(video)
    entry.parent.mkdir(parents=True)
    np.save(entry, read_frames(video, range(48)))  # the old format: no checksum footer
    np.testing.assert_array_equal(cache.open(video).get_frames([1]), read_frames(video, [1]))
    assert "no checksum" in caplog.text and len(count_decodes) == 1
    actual, stored = fc.entry_checksum(entry)
    assert actual == stored  # rewritten with one: later opens read the cache
    cache.open(video)
    assert len(count_decodes) == 1 and caplog.text.count("no checksum") == 1


def test_dataset_clips_from_a_corrupted_cache_equal_fresh_decodes(tmp_path, action_data):
    cfg = DataConfig(data_set="SSV2", data_path=action_data["data_path"], nb_classes=3, **SMALL)
    cached = replace(cfg, decode_cache=str(tmp_path / "cache"))
    build_dataset("val", cached)[0]  # fill the cache
    for entry in (tmp_path / "cache").rglob("*.npy"):
        _flip_middle(entry, 64)
    plain, fast = build_dataset("val", cfg), build_dataset("val", cached)
    for i in range(len(plain)):
        assert torch.equal(plain[i].clips, fast[i].clips)
