"""Folders laid out like the real downloads, filled with synthetic videos, for the tests.

UCF101 (``UCF-101/`` + ``ucfTrainTestlist/``, CRLF lists), HMDB51 (``<class>/*.avi`` +
``testTrainMulti_7030_splits/``, lines ending in a space), Something-Something v2 (``.webm``
+ its JSON files) and an extracted-frames folder: what ``aptune prepare`` and the list
readers must accept. Only the tests need them; the package keeps just the videos
(``aptune.data.synthetic``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from aptune.data.synthetic import make_clip, motion_class_names, write_video


def write_frames(folder: str | os.PathLike, frames: np.ndarray) -> Path:
    """Write frames as a JPEG folder `img_00001.jpg` ... (the extracted-frames layout)."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames, 1):
        Image.fromarray(frame).save(folder / f"img_{i:05d}.jpg", quality=90)
    return folder


def _write_many(
    root: Path,
    items: list[tuple[str, int]],
    num_frames: int,
    size: tuple[int, int],
    fps: float,
    seed: int,
) -> None:
    """Write one synthetic video per (relative path, class) item under `root`."""
    rng = np.random.default_rng(seed)
    for rel, label in items:
        write_video(root / rel, make_clip(label, num_frames, size, rng), fps)


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def make_ucf101_layout(
    root: str | os.PathLike,
    num_classes: int = 4,
    clips_per_group: int = 1,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
) -> dict:
    """`UCF-101/<Class>/v_<Class>_gXX_cYY.avi` + `ucfTrainTestlist/` (CRLF, 1-based labels).

    Groups 1, 8, 15, 22 per class: split s tests groups 7(s-1)+1..7s, as the real splits do.
    """
    root = Path(root)
    classes = [_camel(n) for n in motion_class_names(num_classes)]
    groups = (1, 8, 15, 22)
    items = [
        (f"{c}/v_{c}_g{g:02d}_c{k:02d}.avi", label)
        for label, c in enumerate(classes)
        for g in groups
        for k in range(1, clips_per_group + 1)
    ]
    _write_many(root / "UCF-101", items, num_frames, size, 25, seed)
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    crlf = "\r\n"
    (lists / "classInd.txt").write_bytes(
        "".join(f"{i} {c}{crlf}" for i, c in enumerate(classes, 1)).encode()
    )
    for split in (1, 2, 3):
        test_groups = range(7 * (split - 1) + 1, 7 * split + 1)
        train = [(p, lb) for p, lb in items if int(p.split("_g")[1][:2]) not in test_groups]
        test = [p for p, _ in items if int(p.split("_g")[1][:2]) in test_groups]
        (lists / f"trainlist{split:02d}.txt").write_bytes(
            "".join(f"{p} {lb + 1}{crlf}" for p, lb in train).encode()
        )
        (lists / f"testlist{split:02d}.txt").write_bytes("".join(p + crlf for p in test).encode())
    return {"root": str(root), "classes": classes, "videos": [p for p, _ in items]}


def make_hmdb51_layout(
    root: str | os.PathLike,
    num_classes: int = 4,
    videos_per_class: int = 4,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
) -> dict:
    """`<class>/<name>.avi` + `testTrainMulti_7030_splits/<class>_test_splitN.txt` (tags
    1 train, 2 test, 0 unused; each line ends with a space, like the real files)."""
    root = Path(root)
    classes = motion_class_names(num_classes)
    items = [
        (f"{c}/Clip_{k}_{c}_f_cm_np1_le_med_{k}.avi", label)
        for label, c in enumerate(classes)
        for k in range(videos_per_class)
    ]
    _write_many(root, items, num_frames, size, 30, seed)
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True, exist_ok=True)
    pattern = (1, 1, 2, 0)  # rotated per split so each split differs
    for c in classes:
        names = [p.split("/", 1)[1] for p, _ in items if p.startswith(c + "/")]
        for split in (1, 2, 3):
            lines = [f"{n} {pattern[(k + split - 1) % 4]} \n" for k, n in enumerate(names)]
            (splits / f"{c}_test_split{split}.txt").write_text("".join(lines))
    return {"root": str(root), "classes": classes, "videos": [p for p, _ in items]}


SSV2_TEMPLATES = [
    "Moving [something] from right to left", "Moving [something] from left to right",
    "Moving [something] up", "Moving [something] down", "Turning [something] clockwise",
    "Turning [something] counterclockwise", "Approaching [something] with your camera",
    "Moving away from [something] with your camera", "Moving [something] up and to the left",
    "Moving [something] down and to the right",
]  # fmt: skip


def make_ssv2_layout(
    root: str | os.PathLike,
    num_classes: int = 4,
    videos_per_split: dict[str, int] | None = None,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 80),
    seed: int = 0,
) -> dict:
    """`20bn-something-something-v2/<id>.webm` (vp9, 12 fps) + `labels.json` and
    `something-something-v2-{train,validation,test}.json` (test: ids only)."""
    root = Path(root)
    per = {"train": 2, "validation": 1, "test": 1, **(videos_per_split or {})}
    templates = [SSV2_TEMPLATES[i % len(SSV2_TEMPLATES)] for i in range(num_classes)]
    if num_classes > len(SSV2_TEMPLATES):
        templates = [f"{t} ({i})" for i, t in enumerate(templates)]
    plain = [t.replace("[", "").replace("]", "") for t in templates]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.json").write_text(json.dumps({t: str(i) for i, t in enumerate(plain)}))
    items, next_id = [], 1000
    for split, n in per.items():
        records = []
        for label in range(num_classes):
            for _ in range(n):
                items.append((f"{next_id}.webm", label))
                thing = "a pen"
                records.append(
                    {"id": str(next_id)}
                    if split == "test"
                    else {
                        "id": str(next_id),
                        "label": templates[label].replace("[something]", thing).lower(),
                        "template": templates[label],
                        "placeholders": [thing],
                    }
                )
                next_id += 1
        (root / f"something-something-v2-{split}.json").write_text(json.dumps(records))
    _write_many(root / "20bn-something-something-v2", items, num_frames, size, 12, seed)
    return {"root": str(root), "classes": plain, "videos": [p for p, _ in items]}
