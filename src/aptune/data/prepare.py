"""`aptune prepare {ucf101,hmdb51,ssv2,folder}`: official split files -> VideoMAE lists.

Writes `train.csv`, `val.csv`, `test.csv` and `classes.txt` into `--out`. As in VideoMAE's
UCF101/HMDB51 lists, val and test both hold the test split; for SSv2 both hold the labelled
validation set. Videos named in the split files but missing on disk are reported (first few
and the total) and left out of the lists; nothing found at all is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .lists import (
    SplitSet,
    read_hmdb51_split,
    read_ssv2,
    read_ucf101_split,
    scan_class_folder,
    write_class_names,
    write_video_list,
)

DATASETS = ("ucf101", "hmdb51", "ssv2", "folder")


@dataclass
class PrepareResult:
    out: Path
    classes: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # relative names missing on disk
    listed: int = 0  # distinct videos named by the split files


def _first(candidates: list[Path], test) -> Path | None:
    return next((c for c in candidates if test(c)), None)


def _locate(dataset: str, root: Path, split: int, video_root: Path | None) -> tuple[SplitSet, Path]:
    """Read the split files of `dataset` under `root`; return them and the video folder."""
    if dataset == "ucf101":
        lists = _first([root / "ucfTrainTestlist", root], lambda d: (d / "classInd.txt").is_file())
        if lists is None:
            raise DataError(f"no ucfTrainTestlist/classInd.txt under {root}: give the UCF101 root")
        found = read_ucf101_split(lists, split)
        videos = _first([root / "UCF-101", root / "UCF101", root], Path.is_dir)
    elif dataset == "hmdb51":
        name = f"*_test_split{split}.txt"
        splits = _first([root / "testTrainMulti_7030_splits", root], lambda d: any(d.glob(name)))
        if splits is None:
            raise DataError(f"no testTrainMulti_7030_splits/{name} under {root}: give HMDB51 root")
        found = read_hmdb51_split(splits, split)
        cls = found.classes[0]
        candidates = [root, root / "hmdb51_org", root / "videos", root / "hmdb51"]
        videos = _first(candidates, lambda d: (d / cls).is_dir()) or root
    elif dataset == "ssv2":
        has_labels = lambda d: any(  # noqa: E731
            (d / n).is_file() for n in ("labels.json", "something-something-v2-labels.json")
        )
        labels = _first([root, root / "labels"], has_labels)
        if labels is None:
            raise DataError(f"no labels.json under {root} or {root / 'labels'}: give the SSv2 root")
        found = read_ssv2(labels)
        candidates = [root / "20bn-something-something-v2", root / "videos", root]
        videos = _first(candidates, Path.is_dir)
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    return found, (video_root or videos)


def _folder_splits(root: Path, val_ratio: float) -> SplitSet:
    """Class folders: `root/{train,val,test}/<class>/` if present, else hold out `val_ratio`
    of each class (at least one video when a class has two or more)."""
    if (root / "train").is_dir():
        classes, train = scan_class_folder(root / "train")
        found = SplitSet(classes, train=[(f"train/{p}", lb) for p, lb in train])
        for split in ("val", "test"):
            if (root / split).is_dir():
                names, items = scan_class_folder(root / split)
                index = {c: i for i, c in enumerate(classes)}
                items = [(f"{split}/{p}", index[names[lb]]) for p, lb in items]
                setattr(found, split, items)
        found.val = found.val or found.test
        found.test = found.test or found.val
        return found
    classes, items = scan_class_folder(root)
    found = SplitSet(classes)
    for label in range(len(classes)):
        mine = [it for it in items if it[1] == label]
        # the last videos of each class (by name, so clips of one source stay together)
        held = max(1, round(len(mine) * val_ratio)) if val_ratio > 0 and len(mine) > 1 else 0
        found.train += mine[: len(mine) - held]
        found.val += mine[len(mine) - held :]
    found.test = list(found.val)
    return found


def prepare(
    dataset: str,
    root: str | os.PathLike,
    out: str | os.PathLike,
    split: int = 1,
    video_root: str | os.PathLike | None = None,
    absolute: bool = True,
    val_ratio: float = 0.2,
) -> PrepareResult:
    """Write the lists of `dataset` found under `root` into `out`; see the module docstring."""
    root, out = Path(root).resolve(), Path(out)
    vroot = Path(video_root).resolve() if video_root else None
    if not root.is_dir():
        raise DataError(f"--root {root} is not a folder: give the dataset download folder")
    if dataset == "folder":
        found, videos = _folder_splits(vroot or root, val_ratio), vroot or root
    else:
        found, videos = _locate(dataset, root, split, vroot)
    result = PrepareResult(out, found.classes)
    missing: set[str] = set()
    named: set[str] = set()
    for name in ("train", "val", "test"):
        rows = []
        for rel, label in getattr(found, name):
            named.add(rel)
            if not (videos / rel).exists():
                missing.add(rel)
                continue
            rows.append((str(videos / rel) if absolute else rel, label))
        result.counts[name] = write_video_list(out / f"{name}.csv", rows)
    write_class_names(out / "classes.txt", found.classes)
    result.missing, result.listed = sorted(missing), len(named)
    result.counts["unlabeled_test"] = len(found.unlabeled)
    return result


if __name__ == "__main__":  # `python -m aptune.data.prepare ...`: the command line is the CLI's
    from aptune.cli.prepare import main

    raise SystemExit(main())
