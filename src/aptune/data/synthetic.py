"""Synthetic action videos in real containers/codecs, and dataset layouts like the downloads.

A coloured bar with a marker moves over a calm textured background; the class is the motion, so
temporal order matters and a horizontal flip swaps classes (left <-> right, cw <-> ccw).
Used by tests, the demo and the benchmark: videos are real .avi/mpeg4, .mp4/h264 and
.webm/vp9 files encoded with PyAV, so every decoder path runs on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .lists import write_class_names, write_video_list

MOTION_CLASSES = [
    "move_left", "move_right", "move_up", "move_down", "rotate_cw",
    "rotate_ccw", "grow", "shrink", "move_up_left", "move_down_right",
]  # fmt: skip
# (dx, dy, rotation, scale change) over the whole clip, in units of the frame size / radians
_MOTION = {
    "move_left": (-0.5, 0, 0, 0), "move_right": (0.5, 0, 0, 0), "move_up": (0, -0.5, 0, 0),
    "move_down": (0, 0.5, 0, 0), "rotate_cw": (0, 0, 1.6, 0), "rotate_ccw": (0, 0, -1.6, 0),
    "grow": (0, 0, 0, 1.0), "shrink": (0, 0, 0, -0.6), "move_up_left": (-0.4, -0.4, 0, 0),
    "move_down_right": (0.4, 0.4, 0, 0),
}  # fmt: skip
CODECS = {".avi": "mpeg4", ".mp4": "libx264", ".webm": "libvpx-vp9", ".mkv": "libx264"}
_CODEC_OPTIONS = {
    "mpeg4": {"qscale": "4"},
    "libx264": {"preset": "ultrafast", "crf": "23"},
    "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8", "crf": "32", "b": "0"},
}


def make_clip(
    class_index: int, num_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """uint8 (T, H, W, 3) clip of class `class_index` (motion = MOTION_CLASSES[index % 10])."""
    height, width = size
    dx, dy, rot, grow = _MOTION[MOTION_CLASSES[class_index % len(MOTION_CLASSES)]]
    t = np.linspace(0.0, 1.0, num_frames)[:, None, None]  # (T, 1, 1)
    cx = width * (0.5 - dx / 2 + dx * t + rng.uniform(-0.08, 0.08))
    cy = height * (0.5 - dy / 2 + dy * t + rng.uniform(-0.08, 0.08))
    angle = rng.uniform(0, np.pi) + rot * t
    half = min(height, width) * rng.uniform(0.2, 0.28) * (1 + grow * (t - (grow < 0)))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)  # (T, H, W) bar coordinates
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    bar = (np.abs(u) <= half) & (np.abs(v) <= half * 0.35)
    marker = (np.abs(u - half * 0.8) <= half * 0.3) & (np.abs(v) <= half * 0.6)
    # calm, low-contrast blocky texture: the moving object, not the background, carries
    # the class (a busy background makes the demo's tiny models learn the wrong thing)
    base = rng.uniform(60, 120)
    coarse = base + rng.uniform(-15, 15, (height // 16 + 1, width // 16 + 1, 3))
    background = np.kron(coarse, np.ones((16, 16, 1)))[:height, :width]
    video = np.broadcast_to(background, (num_frames, height, width, 3)).copy()
    video += rng.normal(0, 4, (num_frames, height, width, 1))
    hue = rng.permutation([255.0, rng.uniform(0, 255), 30.0])  # a saturated colour
    video[bar] = hue
    video[marker] = 255.0 - hue
    return np.clip(video, 0, 255).astype(np.uint8)


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 25,
    codec: str | None = None,
    gop: int = 12,
) -> Path:
    """Encode uint8 (T, H, W, 3) frames (even H, W) with PyAV; codec from the extension."""
    import av

    path = Path(path)
    codec = codec or CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"no default codec for {path.suffix!r}; pass codec=")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.options = dict(_CODEC_OPTIONS.get(codec, {}))
        stream.thread_count = 1
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


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


def _class_names(num_classes: int) -> list[str]:
    """Motion names, with a numeric suffix once the ten motions are used up."""
    if num_classes <= len(MOTION_CLASSES):
        return MOTION_CLASSES[:num_classes]
    return [f"{MOTION_CLASSES[i % len(MOTION_CLASSES)]}_{i}" for i in range(num_classes)]


def make_action_dataset(
    root: str | os.PathLike,
    num_classes: int = 4,
    videos_per_class: dict[str, int] | None = None,
    num_frames: int = 16,
    size: tuple[int, int] = (64, 64),
    fmt: str = "mp4",
    seed: int = 0,
    fps: float = 25,
) -> dict:
    """Videos `root/videos/<split>/<class>/<n>.<fmt>` + VideoMAE lists with absolute paths."""
    root = Path(root).resolve()
    per = {"train": 4, "val": 2, "test": 2, **(videos_per_class or {})}
    classes = _class_names(num_classes)
    rng = np.random.default_rng(seed)
    out: dict = {"root": str(root), "classes": classes, "counts": {}, "lists": {}}
    for split, n in per.items():
        entries = []
        for label, name in enumerate(classes):
            for k in range(n):
                path = root / "videos" / split / name / f"{k:03d}.{fmt.lstrip('.')}"
                write_video(path, make_clip(label, num_frames, size, rng), fps)
                entries.append((str(path), label))
        list_file = root / f"{split}.csv"
        write_video_list(list_file, entries)
        out["counts"][split] = len(entries)
        out["lists"][split] = str(list_file)
    write_class_names(root / "classes.txt", classes)
    out["data_path"] = str(root)
    return out


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
    classes = [_camel(n) for n in _class_names(num_classes)]
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
    classes = _class_names(num_classes)
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
