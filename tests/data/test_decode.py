"""Decoding: every container/codec, frame folders, seeking, and unreadable files."""

from __future__ import annotations

import av
import numpy as np
import pytest
from conftest import FPS, NUM_FRAMES, frame_index

from aptune.data import VideoDecodeError, decord_available, open_video, read_frames
from aptune.data.decode import resolve_backend


@pytest.mark.parametrize("ext", ["avi", "mp4", "webm"])
def test_codecs_decode_right_frames(coded_videos, ext):
    with open_video(coded_videos[ext], "pyav") as reader:
        assert reader.num_frames == NUM_FRAMES
        assert reader.fps == pytest.approx(FPS)
        frames = reader.get_frames([10, 3, 40, 3])
    assert frames.shape == (4, 32, 64, 3) and frames.dtype == np.uint8
    assert [frame_index(f) for f in frames] == [10, 3, 40, 3]


@pytest.mark.parametrize("ext", ["avi", "mp4", "webm"])
def test_only_needed_frames_decoded(coded_videos, ext):
    with open_video(coded_videos[ext], "pyav") as reader:
        reader.get_frames([30, 31, 33])  # keyframe 24: decode 24..33, stop
        assert reader.frames_decoded == 10
    with open_video(coded_videos[ext], "pyav") as reader:
        reader.get_frames([1, 40])  # 0..1, seek to keyframe 36, 36..40
        assert reader.frames_decoded == 2 + 5


def test_webm_without_frame_count_in_header(coded_videos):
    with av.open(str(coded_videos["webm"])) as container:
        assert container.streams.video[0].frames == 0  # the container says nothing
    with open_video(coded_videos["webm"], "pyav") as reader:
        assert reader.num_frames == NUM_FRAMES  # counted by demuxing packets


def test_frames_folder(frames_dir):
    assert resolve_backend(frames_dir) == "frames"
    with open_video(frames_dir) as reader:
        assert reader.num_frames == 10
        assert [frame_index(f) for f in reader.get_frames([9, 0, 4])] == [9, 0, 4]


def test_index_out_of_range(coded_videos):
    with open_video(coded_videos["mp4"], "pyav") as reader, pytest.raises(IndexError):
        reader.get_frames([NUM_FRAMES])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", r"video not found: .*missing.mp4"),
        ("empty", r"video file is empty \(0 bytes\): .*empty.mp4"),
        ("corrupt", r"cannot open video .*corrupt.mp4: "),
    ],
)
@pytest.mark.parametrize("backend", ["pyav", "auto"])
def test_bad_video_files(bad_videos, case, message, backend):
    with pytest.raises(VideoDecodeError, match=message) as info:
        read_frames(bad_videos[case], [0], backend)
    assert "\n" not in str(info.value)


def test_truncated_video(coded_videos, tmp_path):
    data = coded_videos["mp4"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # moov atom at the end: nothing indexable
    with pytest.raises(VideoDecodeError, match=r"cut.mp4"):
        read_frames(cut, [0, 10], "pyav")


@pytest.mark.skipif(decord_available(), reason="decord is installed")
def test_forced_decord_missing(coded_videos):
    assert resolve_backend(coded_videos["mp4"], "auto") == "pyav"
    with pytest.raises(VideoDecodeError, match=r"decord is not installed.*--backend pyav"):
        open_video(coded_videos["mp4"], "decord")


@pytest.mark.skipif(not decord_available(), reason="decord not installed")
def test_decord_matches_pyav(coded_videos):
    with open_video(coded_videos["mp4"], "decord") as reader:
        assert reader.num_frames == NUM_FRAMES
        assert [frame_index(f) for f in reader.get_frames([5, 30])] == [5, 30]


def test_unknown_backend(coded_videos):
    with pytest.raises(ValueError, match="backend must be one of"):
        open_video(coded_videos["mp4"], "torchcodec")


@pytest.mark.skipif(not decord_available(), reason="decord not installed")
def test_auto_falls_back_to_pyav_where_decord_fails(tmp_path, coded_frames):
    from aptune.data.synthetic import write_video

    narrow = write_video(tmp_path / "narrow.mp4", coded_frames[:, :, :48].copy())  # decord bug
    assert [frame_index(f) for f in read_frames(narrow, [2, 7], "auto")] == [2, 7]


class _FramesOf:
    """A dataset that decodes in whatever process reads it (a DataLoader worker)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> np.ndarray:
        with open_video(self.path, "pyav") as reader:
            return reader.get_frames([i, i + 1])


def test_forked_worker_decodes_after_the_parent_did(coded_videos):
    """The per-thread RGB scaler is not reused across fork: a worker forked after the parent
    decoded used to deadlock inside the inherited FFmpeg context."""
    import multiprocessing

    import torch

    path = str(coded_videos["mp4"])
    parent = read_frames(path, [0, 1], backend="pyav")  # the parent now owns a scaler
    loader = torch.utils.data.DataLoader(
        _FramesOf(path),
        batch_size=2,
        num_workers=1,
        multiprocessing_context=multiprocessing.get_context("fork"),
        timeout=60,  # a hang becomes a RuntimeError instead of a stuck suite
    )
    batches = [b.numpy() for b in loader]
    assert np.array_equal(batches[0][0], parent)
    assert [frame_index(f) for f in batches[1][1]] == [3, 4]
