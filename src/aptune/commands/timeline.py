"""Timelines over long videos: the run's clip slid over the whole video, window by window.

A window is ``num_frames`` frames ``sampling_rate`` apart starting every ``stride`` seconds,
seen through the run's test crops (the spatial views of evaluation) with the softmax
averaged. Frames are read in chunks of only the indices some window needs and dropped as
soon as no later window needs them, so memory depends on the clip span, not on the video's
length.
"""

from __future__ import annotations

import bisect
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aptune.config import ConfigError
from aptune.data.decode import VideoReader
from aptune.data.transforms import EvalTransform
from aptune.engine.loop import Precision
from aptune.engine.metrics import mean_over_views, view_probs
from aptune.engine.trained import TrainedRun


@dataclass
class Window:
    start: int  # first frame index
    indices: list[int]  # the clip's frame indices (clamped to the video: short videos repeat)
    start_s: float
    end_s: float


def plan_windows(
    num_video_frames: int, fps: float, num_frames: int, rate: int, stride_s: float
) -> list[Window]:
    """Windows every ``stride_s`` seconds whose clip fits in the video (at least one)."""
    if stride_s <= 0:
        raise ConfigError(f"--stride must be > 0 seconds, got {stride_s}")
    fps = fps if fps > 0 else 25.0
    span = (num_frames - 1) * rate + 1
    step = stride_s * fps
    last_start = max(num_video_frames - span, 0)
    starts = sorted({int(round(k * step)) for k in range(int(last_start // step) + 1)})
    starts = [s for s in starts if s <= last_start] or [0]
    out = []
    for s in starts:
        idx = [min(s + i * rate, num_video_frames - 1) for i in range(num_frames)]
        end = min(s + num_frames * rate, num_video_frames)
        out.append(Window(s, idx, round(s / fps, 3), round(end / fps, 3)))
    return out


@dataclass
class WindowStream:
    """Yields ``(window, uint8 frames (T, H, W, 3))``, reading ``chunk`` frames at a time."""

    reader: VideoReader
    windows: list[Window]
    chunk: int = 64
    max_buffered: int = 0  # most frames held at once (tests check it does not grow)
    _buffer: dict[int, np.ndarray] = field(default_factory=dict)

    def __iter__(self) -> Iterator[tuple[Window, np.ndarray]]:
        needed = sorted({i for w in self.windows for i in w.indices})
        pos = 0  # next position in `needed` to read
        for w in self.windows:
            while pos < len(needed) and needed[pos] <= max(w.indices):
                end = bisect.bisect_left(needed, needed[pos] + self.chunk)
                batch = needed[pos:end]
                self._buffer.update(zip(batch, self.reader.get_frames(batch)))
                pos = end
                self.max_buffered = max(self.max_buffered, len(self._buffer))
            yield w, np.stack([self._buffer[i] for i in w.indices])
            for i in [i for i in self._buffer if i < w.start]:
                del self._buffer[i]
        self._buffer.clear()


def window_probs(
    trained: TrainedRun,
    stream: WindowStream,
    batch_size: int,
    precision: Precision,
    progress: bool = True,
    desc: str = "timeline",
) -> Iterator[tuple[Window, torch.Tensor]]:
    """Mean softmax over the run's test crops of each window, batched across windows."""
    cfg = trained.data
    crops = cfg.test_num_crop
    transform = EvalTransform(cfg.input_size, cfg.short_side_size, crops)
    per_batch = max(1, batch_size // crops)  # windows per forward pass
    pending: list[tuple[Window, list[torch.Tensor]]] = []

    def flush() -> Iterator[tuple[Window, torch.Tensor]]:
        clips = torch.stack([v for _, views in pending for v in views])  # (W*crops, 3, T, S, S)
        with torch.no_grad(), precision.autocast():
            logits = trained.model(clips.to(trained.device))
        probs = mean_over_views(view_probs(logits).cpu(), crops)  # (W, C)
        yield from zip([w for w, _ in pending], probs)
        pending.clear()

    bar = tqdm(
        stream,
        total=len(stream.windows),
        desc=desc,
        unit="win",
        leave=False,
        disable=None if progress else True,
    )
    for window, frames in bar:
        resized = transform.resize(frames)
        pending.append((window, [transform.view(resized, c) for c in range(crops)]))
        if len(pending) == per_batch:
            yield from flush()
    if pending:
        yield from flush()


def segments(rows: list[dict]) -> list[dict]:
    """Runs of windows with the same top-1: start, end, class and mean top-1 probability."""
    out: list[dict] = []
    for row in rows:
        label, name, prob = row["topk"][0]
        if out and out[-1]["label"] == label:
            seg = out[-1]
            seg["end_s"], seg["windows"] = row["end_s"], seg["windows"] + 1
            seg["prob_sum"] += prob
        else:
            out.append(
                {
                    "start_s": row["start_s"],
                    "end_s": row["end_s"],
                    "label": label,
                    "name": name,
                    "windows": 1,
                    "prob_sum": prob,
                }
            )
    for seg in out:
        seg["mean_prob"] = round(seg.pop("prob_sum") / seg["windows"], 6)
    return out


def timeline_rows(windows_probs, names: list[str], topk: int) -> tuple[list[dict], np.ndarray]:
    """-> (one row per window with its top-k, all probabilities (W, C))."""
    rows, all_probs = [], []
    for w, p in windows_probs:
        top = torch.topk(p, min(topk, len(names)))
        rows.append(
            {
                "start_s": w.start_s,
                "end_s": w.end_s,
                "topk": [
                    [int(i), names[int(i)], round(float(v), 6)]
                    for v, i in zip(top.values, top.indices)
                ],
            }
        )
        all_probs.append(p.numpy())
    return rows, np.stack(all_probs) if all_probs else np.zeros((0, len(names)))


def write_csv(rows: list[dict], path: Path) -> None:
    k = len(rows[0]["topk"]) if rows else 1
    header = ["start_s", "end_s", "label", "name", "prob"]
    header += [f"top{r}_{c}" for r in range(2, k + 1) for c in ("label", "name", "prob")]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row["start_s"], row["end_s"]] + [x for t in row["topk"] for x in t])


def plot_timeline(
    rows: list[dict], probs: np.ndarray, names: list[str], path: Path, title: str, lines: int = 6
) -> None:
    """Probabilities over time of the classes that matter most (top-1 somewhere first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
    winners = list(dict.fromkeys(int(np.argmax(p)) for p in probs))
    others = [int(c) for c in np.argsort(-probs.max(axis=0)) if int(c) not in winners]
    shown = (winners + others)[: max(lines, 1)]
    fig, ax = plt.subplots(figsize=(max(6.0, min(0.25 * len(rows), 16.0)), 3.5))
    for c in shown:
        ax.plot(centres, probs[:, c], marker="." if len(rows) < 60 else None, label=names[c])
    end = rows[-1]["end_s"] if rows else 1.0
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1.02), xlim=(0, end), title=title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_timeline(
    video: str, rows: list[dict], probs: np.ndarray, names: list[str], out: Path, meta: dict
) -> dict[str, Path]:
    """``<stem>.timeline.csv``, ``.json`` and ``.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(video.rstrip("/")).stem
    paths = {ext: out / f"{stem}.timeline.{ext}" for ext in ("csv", "json", "png")}
    write_csv(rows, paths["csv"])
    doc = {"video": video, **meta, "windows": rows, "segments": segments(rows)}
    paths["json"].write_text(json.dumps(doc, indent=1))
    plot_timeline(rows, probs, names, paths["png"], Path(video).name)
    return paths
