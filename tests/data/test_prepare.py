"""`aptune prepare` on synthetic downloads laid out like the real ones and on real excerpts."""

from __future__ import annotations

import argparse
from pathlib import Path

from aptune.cli.prepare import add_prepare_parser, main, run_prepare
from aptune.data import build_dataset, parse_video_list, read_class_names
from aptune.data.datasets import DataConfig


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_layouts_look_like_downloads(layouts):
    ucf = Path(layouts["ucf101"]["root"])
    assert b"\r\n" in (ucf / "ucfTrainTestlist" / "trainlist01.txt").read_bytes()
    assert (ucf / "UCF-101" / "MoveLeft" / "v_MoveLeft_g01_c01.avi").is_file()
    hmdb = Path(layouts["hmdb51"]["root"]) / "testTrainMulti_7030_splits"
    assert all(line.endswith(" ") for line in _lines(hmdb / "move_left_test_split1.txt"))
    assert (Path(layouts["ssv2"]["root"]) / "20bn-something-something-v2" / "1000.webm").is_file()


def test_prepare_ucf101(layouts, tmp_path, capsys):
    root = layouts["ucf101"]["root"]
    assert main(["ucf101", "--root", root, "--out", str(tmp_path)]) == 0
    assert "train.csv        9 videos" in capsys.readouterr().out
    train = parse_video_list(tmp_path / "train.csv", nb_classes=3)
    test = parse_video_list(tmp_path / "test.csv", nb_classes=3)
    assert len(train) == 9 and len(test) == 3
    assert all(Path(e.path).is_absolute() and Path(e.path).is_file() for e in train + test)
    assert {Path(e.path).name: e.label for e in test} == {
        "v_MoveLeft_g01_c01.avi": 0, "v_MoveRight_g01_c01.avi": 1, "v_MoveUp_g01_c01.avi": 2,
    }  # fmt: skip
    assert read_class_names(tmp_path / "classes.txt") == ["MoveLeft", "MoveRight", "MoveUp"]
    cfg = DataConfig(data_set="UCF101", data_path=str(tmp_path), nb_classes=3, num_frames=4,
                     input_size=32, short_side_size=32)  # fmt: skip
    assert build_dataset("val", cfg)[0].clips.shape == (1, 3, 4, 32, 32)


def test_prepare_ucf101_split2_relative(layouts, tmp_path):
    root = layouts["ucf101"]["root"]
    assert main(["ucf101", "--root", root, "--out", str(tmp_path), "--split", "2",
                 "--no-absolute"]) == 0  # fmt: skip
    assert _lines(tmp_path / "test.csv")[0] == "MoveLeft/v_MoveLeft_g08_c01.avi 0"


def test_prepare_hmdb51(layouts, tmp_path):
    assert main(["hmdb51", "--root", layouts["hmdb51"]["root"], "--out", str(tmp_path)]) == 0
    # per class of 4 videos: tags 1 1 2 0 -> 2 train, 1 test, 1 unused
    assert len(_lines(tmp_path / "train.csv")) == 6 and len(_lines(tmp_path / "val.csv")) == 3
    assert read_class_names(tmp_path / "classes.txt") == ["move_left", "move_right", "move_up"]


def test_prepare_ssv2(layouts, tmp_path, capsys):
    assert main(["ssv2", "--root", layouts["ssv2"]["root"], "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 unlabelled ids" in out
    train = parse_video_list(tmp_path / "train.csv", nb_classes=3)
    assert [e.label for e in train] == [0, 0, 1, 1, 2, 2]
    assert read_class_names(tmp_path / "classes.txt")[0] == "Moving something from right to left"


def test_prepare_folder(action_data, tmp_path):
    videos = Path(action_data["root"]) / "videos"
    assert main(["folder", "--root", str(videos / "train"), "--out", str(tmp_path / "a")]) == 0
    assert len(_lines(tmp_path / "a" / "train.csv")) == 3  # 1 of 2 per class held out
    assert main(["folder", "--root", str(videos), "--out", str(tmp_path / "b")]) == 0
    assert len(_lines(tmp_path / "b" / "train.csv")) == 6
    assert len(_lines(tmp_path / "b" / "val.csv")) == 3


def test_missing_videos_reported(formats, tmp_path, capsys):
    videos = tmp_path / "videos"
    (videos / "ApplyEyeMakeup").mkdir(parents=True)
    (videos / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g08_c01.avi").write_bytes(b"x")
    code = main(["ucf101", "--root", str(formats / "ucf101"), "--out", str(tmp_path / "o"),
                 "--video_root", str(videos), "--no-absolute"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0
    assert "6 of 7 videos named in the split files are missing on disk" in err
    assert "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi" in err
    assert _lines(tmp_path / "o" / "train.csv") == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 0"]


def test_real_excerpts_without_videos_fail(formats, tmp_path, capsys):
    for name in ("ucf101", "hmdb51", "ssv2"):
        assert main([name, "--root", str(formats / name), "--out", str(tmp_path / name)]) == 1
        assert "none of the listed videos exist on disk" in capsys.readouterr().err
    assert len(read_class_names(tmp_path / "ucf101" / "classes.txt")) == 3


def test_bad_root(tmp_path, capsys):
    assert main(["hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no testTrainMulti_7030_splits" in capsys.readouterr().err


def test_registers_on_cli_parser():
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["prepare", "ssv2", "--root", "r", "--out", "o"])
    assert args.func is run_prepare and args.split == 1 and args.absolute is True
