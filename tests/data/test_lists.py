"""List files: VideoMAE csv, the official split formats (real excerpts), and their errors."""

from __future__ import annotations

import pytest

from aptune.data import DataError, VideoDecodeError, parse_video_list, read_class_names
from aptune.data.lists import read_hmdb51_split, read_ssv2, read_ucf101_split


def test_error_hierarchy():
    assert issubclass(DataError, ValueError)
    assert issubclass(VideoDecodeError, DataError)


def test_videomae_list_quirks(tmp_path):
    f = tmp_path / "train.csv"
    f.write_bytes(b"a/v1.avi 0\r\n/abs/v2.avi 2 \r\n\r\nmy folder/v 3.mp4  1\n")
    entries = parse_video_list(f, data_root="/data", nb_classes=3)
    assert [(e.path, e.label, e.line) for e in entries] == [
        ("/data/a/v1.avi", 0, 1),
        ("/abs/v2.avi", 2, 2),
        ("/data/my folder/v 3.mp4", 1, 4),
    ]


def test_real_videomae_list(formats):
    entries = parse_video_list(formats / "videomae_lists" / "train.csv", nb_classes=101)
    assert entries[0].path.endswith("v_ApplyEyeMakeup_g08_c01.avi") and entries[0].label == 0
    assert entries[1].label == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.avi 0\nb.avi\n", r"train.csv:2: malformed line 'b.avi'"),
        ("a.avi 0\nb.avi x\n", r"train.csv:2: malformed line 'b.avi x'"),
        ("a.avi 0\n\nb.avi 5\n", r"train.csv:3: label 5 outside \[0, 5\).*--nb_classes"),
        ("a.avi -1\n", r"train.csv:1: label -1 outside"),
    ],
)
def test_list_errors(tmp_path, text, expected):
    f = tmp_path / "train.csv"
    f.write_text(text)
    with pytest.raises(DataError, match=expected) as info:
        parse_video_list(f, nb_classes=5)
    assert "\n" not in str(info.value)


def test_missing_list_file(tmp_path):
    with pytest.raises(DataError, match=r"list file not found: .*nope.csv.*--data_path"):
        parse_video_list(tmp_path / "nope.csv")


def test_class_names_with_or_without_index(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_bytes(b"1 ApplyEyeMakeup\r\nmove left\r\n")
    assert read_class_names(f) == ["ApplyEyeMakeup", "move left"]


def test_real_ucf101_split(formats):
    s = read_ucf101_split(formats / "ucf101" / "ucfTrainTestlist", 1)
    assert s.classes == ["ApplyEyeMakeup", "ApplyLipstick", "Archery"]
    assert s.train[0] == ("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", 0)
    assert s.train[-1] == ("Archery/v_Archery_g10_c03.avi", 2)
    assert s.test == [
        ("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", 0),
        ("ApplyLipstick/v_ApplyLipstick_g02_c04.avi", 1),
        ("Archery/v_Archery_g07_c05.avi", 2),
    ]
    assert all("\r" not in p for p, _ in s.train + s.test)


def test_real_hmdb51_split(formats):
    s = read_hmdb51_split(formats / "hmdb51" / "testTrainMulti_7030_splits", 1)
    assert s.classes == ["brush_hair", "cartwheel"]
    assert s.train == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 0),
        ("cartwheel/Cartwheel_(Gymnastics)_cartwheel_f_cm_np1_ri_med_1.avi", 1),
    ]
    assert s.test == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_1.avi", 0),
        ("cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi", 1),
    ]


def test_real_ssv2(formats):
    s = read_ssv2(formats / "ssv2")
    assert s.classes[1] == "Holding something next to something"
    assert s.train == [("78687.webm", 1), ("42326.webm", 2)]
    assert s.val == s.test == [("74225.webm", 0)]
    assert s.unlabeled == ["1420.webm", "1421.webm"]


def test_ucf101_bad_train_line(tmp_path):
    (tmp_path / "classInd.txt").write_bytes(b"1 A\r\n2 B\r\n")
    (tmp_path / "trainlist01.txt").write_bytes(b"A/v_A_g08_c01.avi 1\r\nB/v_B_g08_c01.avi 3\r\n")
    (tmp_path / "testlist01.txt").write_bytes(b"A/v_A_g01_c01.avi\r\n")
    with pytest.raises(DataError, match=r"trainlist01.txt:2: label 2 outside \[0, 2\)"):
        read_ucf101_split(tmp_path, 1)


def test_ssv2_unknown_template(tmp_path):
    (tmp_path / "labels.json").write_text('{"Moving something up": "0"}')
    (tmp_path / "something-something-v2-train.json").write_text(
        '[{"id": "7", "template": "Dropping [something]"}]'
    )
    with pytest.raises(DataError, match=r"train.json: entry 1 \('7'\): template 'Dropping"):
        read_ssv2(tmp_path)
