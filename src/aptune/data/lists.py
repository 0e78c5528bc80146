"""List files: VideoMAE `<path> <label>` csv files and the official split files they come from.

Parsers return plain `(path, label)` pairs; every problem raises `DataError` naming the file,
the line and the fix, so a broken list fails before training starts instead of mid-epoch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError

VIDEO_EXTENSIONS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclass(frozen=True)
class VideoEntry:
    """One row of a list file; `line` (1-based) lets later errors point back at it."""

    path: str
    label: int
    line: int = 0


@dataclass
class SplitSet:
    """Class names plus (relative path, 0-based label) pairs per split, as read from a dataset."""

    classes: list[str]
    train: list[tuple[str, int]] = field(default_factory=list)
    val: list[tuple[str, int]] = field(default_factory=list)
    test: list[tuple[str, int]] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)


def _read_lines(path: str | os.PathLike, hint: str = "") -> list[str]:
    """Lines without CR/LF and surrounding blanks (real split files carry CRLF, trailing spaces)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"list file not found: {p}{hint}")
    text = p.read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
    return [line.strip() for line in text.splitlines()]


def _check_label(label: int, nb_classes: int | None, where: str) -> None:
    if nb_classes is not None and not 0 <= label < nb_classes:
        raise DataError(
            f"{where}: label {label} outside [0, {nb_classes}): set --nb_classes to the "
            "number of classes of this dataset or fix the label (labels are 0-based)"
        )


def parse_video_list(
    path: str | os.PathLike, data_root: str = "", nb_classes: int | None = None
) -> list[VideoEntry]:
    """Read a VideoMAE list (`<video path> <integer label>` per line, no header).

    The label is the last whitespace-separated field, so paths containing spaces still work.
    Relative paths are joined to `data_root`; blank lines are ignored.
    """
    entries = []
    for lineno, line in enumerate(_read_lines(path, " (check --data_path / --eval_data_path)"), 1):
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise DataError(
                f"{path}:{lineno}: malformed line {line!r}: expected '<video path> <integer "
                "label>' separated by a space; fix or delete this line"
            )
        label = int(parts[1])
        _check_label(label, nb_classes, f"{path}:{lineno}")
        video = parts[0]
        if data_root and not os.path.isabs(video):
            video = os.path.join(data_root, video)
        entries.append(VideoEntry(video, label, lineno))
    return entries


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names one per line; an optional leading index (`1 ApplyEyeMakeup`) is dropped."""
    names = []
    for line in _read_lines(path):
        if not line:
            continue
        parts = line.split(None, 1)
        names.append(parts[1] if len(parts) == 2 and _is_int(parts[0]) else line)
    return names


def write_video_list(path: str | os.PathLike, entries: Iterable[tuple[str, int]]) -> int:
    """Write a VideoMAE list with LF endings; returns the number of lines written."""
    lines = [f"{video} {label}\n" for video, label in entries]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(lines), encoding="utf-8")
    return len(lines)


def write_class_names(path: str | os.PathLike, names: Iterable[str]) -> None:
    Path(path).write_text("".join(f"{n}\n" for n in names), encoding="utf-8")


def read_ucf101_split(list_dir: str | os.PathLike, split: int = 1) -> SplitSet:
    """UCF101 `ucfTrainTestlist/`: classInd (1-based), trainlistNN with labels, testlistNN without.

    Test labels come from the class folder of each path, as in the official protocol.
    """
    list_dir = Path(list_dir)
    classes: list[str] = []
    for lineno, line in enumerate(_read_lines(list_dir / "classInd.txt"), 1):
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not _is_int(parts[0]) or int(parts[0]) != len(classes) + 1:
            raise DataError(
                f"{list_dir / 'classInd.txt'}:{lineno}: expected '<index> <ClassName>' with "
                f"index {len(classes) + 1}, got {line!r}; restore the official classInd.txt"
            )
        classes.append(parts[1])
    index = {name: i for i, name in enumerate(classes)}
    out = SplitSet(classes)
    train_file = list_dir / f"trainlist{split:02d}.txt"
    for lineno, line in enumerate(_read_lines(train_file), 1):
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise DataError(
                f"{train_file}:{lineno}: malformed line {line!r}: expected "
                "'<Class>/<video>.avi <1-based label>'; restore the official split file"
            )
        label = int(parts[1]) - 1
        _check_label(label, len(classes), f"{train_file}:{lineno}")
        out.train.append((parts[0].replace("\\", "/"), label))
    test_file = list_dir / f"testlist{split:02d}.txt"
    for lineno, line in enumerate(_read_lines(test_file), 1):
        if not line:
            continue
        video = line.split()[0].replace("\\", "/")
        folder = video.split("/")[0]
        if folder not in index:
            raise DataError(
                f"{test_file}:{lineno}: class folder {folder!r} of {video!r} is not in "
                "classInd.txt; restore the official split files"
            )
        out.test.append((video, index[folder]))
    out.val = list(out.test)
    return out


def read_hmdb51_split(split_dir: str | os.PathLike, split: int = 1) -> SplitSet:
    """HMDB51 `testTrainMulti_7030_splits/<class>_test_splitN.txt`: tag 1 train, 2 test, 0 unused.

    Classes are the sorted set of file-name prefixes; paths come out as `<class>/<video>`.
    """
    split_dir = Path(split_dir)
    suffix = f"_test_split{split}.txt"
    files = sorted(p for p in split_dir.glob(f"*{suffix}") if p.is_file())
    if not files:
        raise DataError(f"no '*{suffix}' files in {split_dir}: point --root at the HMDB51 download")
    out = SplitSet([f.name[: -len(suffix)] for f in files])
    for label, f in enumerate(files):
        for lineno, line in enumerate(_read_lines(f), 1):
            if not line:
                continue
            parts = line.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DataError(
                    f"{f}:{lineno}: malformed line {line!r}: expected '<video>.avi <0|1|2>'; "
                    "restore the official split file"
                )
            video = f"{out.classes[label]}/{parts[0]}"
            if parts[1] == "1":
                out.train.append((video, label))
            elif parts[1] == "2":
                out.test.append((video, label))
    out.val = list(out.test)
    return out


def _load_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"file not found: {path}: point --root at the SSv2 label folder") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); re-download it") from None


def read_ssv2(label_dir: str | os.PathLike, video_ext: str = ".webm") -> SplitSet:
    """SSv2 json files: label = labels[template without brackets]; videos are `<id>.webm`.

    val and test both hold the labelled validation set (as VideoMAE's lists do); the
    unlabelled test ids are returned separately.
    """
    label_dir = Path(label_dir)
    labels_file = label_dir / "labels.json"
    if not labels_file.is_file():
        labels_file = label_dir / "something-something-v2-labels.json"
    labels = _load_json(labels_file)
    if not isinstance(labels, dict):
        raise DataError(f"{labels_file}: expected an object {{template: index}}; re-download it")
    index = {k: int(v) for k, v in labels.items()}
    classes = [""] * len(index)
    for name, i in index.items():
        _check_label(i, len(index), f"{labels_file}: {name!r}")
        classes[i] = name
    out = SplitSet(classes)
    for split, target in (("train", out.train), ("validation", out.val)):
        f = label_dir / f"something-something-v2-{split}.json"
        items = _load_json(f)
        for n, item in enumerate(items if isinstance(items, list) else [], 1):
            template = str(item.get("template", "")).replace("[", "").replace("]", "")
            if "id" not in item or template not in index:
                raise DataError(
                    f"{f}: entry {n} ({item.get('id')!r}): template {template!r} not in "
                    f"{labels_file.name}; use the labels.json of the same SSv2 release"
                )
            target.append((f"{item['id']}{video_ext}", index[template]))
    out.test = list(out.val)
    test_file = label_dir / "something-something-v2-test.json"
    if test_file.is_file():
        test_items = _load_json(test_file)
        out.unlabeled = [f"{t['id']}{video_ext}" for t in test_items if isinstance(t, dict)]
    return out


def scan_class_folder(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """A folder with one sub-folder per class: sorted class names and (relative path, label)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"folder not found: {root}: give a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    items = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).iterdir()):
            if f.suffix.lower() in VIDEO_EXTENSIONS or (f.is_dir() and any(f.glob("*.jpg"))):
                items.append((f"{name}/{f.name}", label))
    if not items:
        raise DataError(f"no videos found in the class sub-folders of {root}")
    return classes, items
