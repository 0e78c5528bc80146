"""Datasets and batches: shapes, views, list checks at construction, skipped videos."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from aptune.data import (
    DataConfig,
    DataError,
    VideoDecodeError,
    build_dataset,
    collate_clips,
    synthetic,
)

SMALL = {"num_frames": 8, "sampling_rate": 2, "input_size": 32, "short_side_size": 40}


@pytest.fixture
def cfg(action_data) -> DataConfig:
    return DataConfig(data_set="UCF101", data_path=action_data["data_path"], nb_classes=3, **SMALL)


def test_train_batch_with_repeated_augmentation(cfg):
    ds = build_dataset(
        "train", replace(cfg, num_sample=2, is_aa=True, aa="rand-m4-n2-mstd0.2-inc1")
    )
    assert len(ds) == 6 and ds.class_names == ["move_left", "move_right", "move_up"]
    assert all(Path(p).is_file() for p in ds.video_paths)
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_clips)))
    assert batch.clips.shape == (6, 3, 8, 32, 32) and batch.clips.dtype == torch.float32
    assert batch.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert batch.video_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert batch.view_index.tolist() == [0] * 6 and batch.skipped == []
    assert not torch.equal(batch.clips[0], batch.clips[1])  # two different augmentations


def test_val_is_one_centre_view(cfg):
    ds = build_dataset("val", cfg)
    assert len(ds) == 3
    a, b = ds[1], ds[1]
    assert torch.equal(a.clips, b.clips)  # deterministic
    assert a.clips.shape == (1, 3, 8, 32, 32) and a.view_index == 0


def test_test_views(cfg):
    ds = build_dataset("test", replace(cfg, test_num_segment=2, test_num_crop=3))
    assert len(ds) == 3 * 2 * 3
    batch = collate_clips([ds[i] for i in range(len(ds))])
    assert batch.clips.shape == (18, 3, 8, 32, 32)
    assert batch.view_index.tolist() == list(range(6)) * 3
    assert batch.video_index.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert batch.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert not torch.equal(batch.clips[0], batch.clips[2])  # left vs right crop


def test_flip_setting_per_data_set(cfg):
    assert build_dataset("train", replace(cfg, data_set="SSV2")).train_transform.flip is False
    assert build_dataset("train", cfg).train_transform.flip is True
    assert build_dataset("train", replace(cfg, data_set="SSV2", flip=True)).train_transform.flip
    assert build_dataset("train", replace(cfg, data_set="SSV2")).mode == "segment"


def test_dataloader_with_workers(cfg):
    loader = DataLoader(build_dataset("train", cfg), batch_size=2, num_workers=2,
                        collate_fn=collate_clips, pin_memory=False)  # fmt: skip
    assert sum(len(b) for b in loader) == 6


def _list(tmp_path: Path, rows: list[str], classes: str | None = None) -> Path:
    (tmp_path / "train.csv").write_text("".join(r + "\n" for r in rows))
    for split in ("val", "test"):
        (tmp_path / f"{split}.csv").write_text("".join(r + "\n" for r in rows))
    if classes is not None:
        (tmp_path / "classes.txt").write_text(classes)
    return tmp_path


@pytest.fixture
def mixed_lists(tmp_path, action_data, bad_videos) -> Path:
    good = Path(action_data["root"]) / "videos" / "train" / "move_left" / "000.mp4"
    return _list(tmp_path, [f"{good} 0", f"{bad_videos['corrupt']} 1", f"{bad_videos['empty']} 2"])


def test_skipped_videos_reported(mixed_lists, cfg, caplog):
    ds = build_dataset("train", replace(cfg, data_path=str(mixed_lists)))
    with caplog.at_level(logging.WARNING, logger="aptune.data"):
        batch = collate_clips([ds[i] for i in range(3)])
    assert batch.clips.shape == (1, 3, 8, 32, 32) and batch.video_index.tolist() == [0]
    assert [Path(p).name for p, _ in batch.skipped] == ["corrupt.mp4", "empty.mp4"]
    assert "empty (0 bytes)" in batch.skipped[1][1]
    assert "skipped unreadable video" in caplog.text
    empty = collate_clips([ds[1]])
    assert empty.clips.shape == (0, 3, 8, 32, 32) and len(empty.skipped) == 1


def test_strict_and_eval_raise(mixed_lists, cfg):
    strict = build_dataset("train", replace(cfg, data_path=str(mixed_lists), strict_data=True))
    with pytest.raises(VideoDecodeError, match="corrupt.mp4"):
        strict[1]
    for split in ("val", "test"):
        with pytest.raises(VideoDecodeError, match="empty.mp4"):
            build_dataset(split, replace(cfg, data_path=str(mixed_lists)))[
                2 * (split == "val") or 30
            ]


@pytest.mark.parametrize(
    ("rows", "classes", "nb", "message"),
    [
        (["{v} 0", "{v} 3"], None, 3, r"train.csv:2: label 3 outside \[0, 3\)"),
        (["{v} 0", "{v}"], None, 3, r"train.csv:2: malformed line"),
        (["{v} 0"], "a\nb\n", 3, r"classes.txt: 2 classes but --nb_classes is 3: set --nb_cla"),
        (["{v} 0", "/no/such/a.mp4 1", "/no/such/b.mp4 1"], None, 3,
         r"2 of 3 listed videos are missing on disk, first: /no/such/a.mp4 \(line 2\)"),
        ([], None, 3, r"no videos listed"),
    ],
)  # fmt: skip
def test_list_problems_fail_at_construction(tmp_path, action_data, cfg, rows, classes, nb, message):
    video = action_data["root"] + "/videos/train/move_left/000.mp4"
    _list(tmp_path, [r.format(v=video) for r in rows], classes)
    with pytest.raises(DataError, match=message) as info:
        build_dataset("train", replace(cfg, data_path=str(tmp_path), nb_classes=nb))
    assert "\n" not in str(info.value)


def test_missing_list_file(tmp_path, cfg):
    with pytest.raises(DataError, match=r"list file not found: .*val.csv: check --eval_data_path"):
        build_dataset("val", replace(cfg, eval_data_path=str(tmp_path)))


def test_short_video_padded(tmp_path, cfg, caplog):
    clip = synthetic.make_clip(0, 5, (48, 64), np.random.default_rng(0))
    video = synthetic.write_video(tmp_path / "short.mp4", clip)
    _list(tmp_path, [f"{video} 0"])
    ds = build_dataset("train", replace(cfg, data_path=str(tmp_path)))
    with caplog.at_level(logging.INFO, logger="aptune.data"):
        item = ds[0]
    assert item.clips.shape == (1, 3, 8, 32, 32)
    assert "short.mp4 has 5 frames, shorter than one clip" in caplog.text
    assert "padded by repeating its last frame" in caplog.text


def test_frames_folders_and_relative_paths(tmp_path, frames_dir, cfg):
    _list(tmp_path, [f"{frames_dir.name} 1"])
    ds = build_dataset(
        "val", replace(cfg, data_path=str(tmp_path), data_root=str(frames_dir.parent))
    )
    assert ds[0].clips.shape == (1, 3, 8, 32, 32) and ds[0].label == 1


def test_image_folder_scans_class_folders(action_data, cfg):
    videos = Path(action_data["root"]) / "videos"
    ds = build_dataset("train", replace(cfg, data_set="image_folder", data_path=str(videos)))
    assert len(ds) == 6 and ds.labels == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("data_set", "K400", "--data_set must be one of"),
        ("sampling", "uniform", "--sampling must be one of"),
        ("backend", "cv2", "--backend must be one of"),
        ("num_sample", 0, "--num_sample must be >= 1"),
        ("reprob", 2.0, r"--reprob must be in \[0, 1\]"),
        ("num_frames", 7, "multiple of --tubelet_size"),
    ],
)
def test_config_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(**{field: value})


def test_train_clips_depend_only_on_the_torch_seed(cfg):
    # the engine seeds torch per (seed, epoch, rank); each item draws its numpy seed from it
    aa = "rand-m9-n2-mstd0.5-inc1"
    ds = build_dataset("train", replace(cfg, num_sample=2, is_aa=True, aa=aa))
    torch.manual_seed(3)
    a = ds[0].clips
    torch.manual_seed(3)
    b = ds[0].clips
    torch.manual_seed(4)
    c = ds[0].clips
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # num_sample clips differ
