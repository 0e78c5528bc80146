"""``aptune predict``: class probabilities of new videos from a trained run folder.

Each video is seen through the run's test views (segments x crops) and the softmax is
averaged, exactly as in evaluation, so a prediction matches what ``aptune eval`` scores.
With ``--timeline`` the run's clip slides over the whole video instead (``timeline.py``)
and each video gets a CSV, a JSON and a plot of its classes over time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from aptune.data import VideoClipDataset, collate_clips, open_video
from aptune.data.errors import DataError
from aptune.data.lists import VideoEntry
from aptune.engine.metrics import ViewMeans
from aptune.engine.precision import Precision, inference_precision
from aptune.engine.segment_merge import WholeVideos, forward_views, token_merge, videos_per_batch
from aptune.engine.trained import TrainedRun, open_run

from .timeline import (
    WindowStream,
    plan_windows,
    segments,
    timeline_rows,
    window_probs,
    write_timeline,
)


def check_videos(videos: list[str]) -> None:
    missing = [v for v in videos if not Path(v).exists()]
    if missing:
        raise DataError(f"{missing[0]}: no such video file or frame folder")


def precision_for(trained: TrainedRun, bf16: bool) -> Precision:
    """Training's rule for the card (bf16 on 8.0+ GPUs, fp16 on older ones, fp32 on CPU),
    or bf16 with ``--bf16``."""
    return inference_precision(trained.device, bf16)


def view_probs(
    trained: TrainedRun,
    videos: list[str],
    batch_size: int | None = None,
    precision: Precision | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(N, C) mean softmax over the run's test views of each video (eval's rule, with
    its ``--segment_merge``: whole videos per batch when segments join as tokens)."""
    c = trained.config
    entries = [VideoEntry(str(Path(v).resolve()), 0, i + 1) for i, v in enumerate(videos)]
    ds = VideoClipDataset("test", trained.data, entries, trained.class_names, source="predict")
    batch = batch_size or c.optim.batch_size_val
    merge = token_merge(c)
    if merge is not None:
        ds, batch = WholeVideos(ds), videos_per_batch(batch, merge)
    loader = DataLoader(ds, batch_size=batch, collate_fn=collate_clips)
    precision = precision or inference_precision(trained.device)
    means = ViewMeans(len(videos), c.data.nb_classes)
    with torch.no_grad():
        for batch in tqdm(loader, desc="predict", leave=False, disable=None if progress else True):
            with precision.autocast():
                logits, video_index, _, _ = forward_views(trained.model, batch,
                                                          trained.device, merge)  # fmt: skip
            means.add(logits, video_index)
    return means.means()


def predict_videos(
    run: Path,
    videos: list[str],
    which: str = "best",
    topk: int = 5,
    overrides: dict | None = None,
    bf16: bool = False,
    batch_size: int | None = None,
    progress: bool = False,
) -> list[dict]:
    """Top-k of each video: ``{"path", "topk": [(class, name, prob), ...]}``."""
    check_videos(videos)
    trained = open_run(run, which, overrides=overrides)
    probs = view_probs(trained, videos, batch_size, precision_for(trained, bf16), progress)
    names, out = trained.class_names, []
    for path, p in zip(videos, probs):
        top = torch.topk(p, min(topk, len(names)))
        out.append(
            {
                "path": path,
                "topk": [
                    (int(i), names[int(i)], round(float(v), 6))
                    for v, i in zip(top.values, top.indices)
                ],
            }
        )
    return out


def predict_timeline(
    trained: TrainedRun,
    video: str,
    stride_s: float = 1.0,
    topk: int = 5,
    batch_size: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> tuple[list[dict], object, dict]:
    """-> (rows: one per window with start_s, end_s, topk; probabilities (W, C); metadata)."""
    c = trained.config
    with open_video(video, trained.data.backend) as reader:
        windows = plan_windows(
            reader.num_frames, reader.fps, c.model.num_frames, c.data.sampling_rate, stride_s
        )
        stream = WindowStream(reader, windows)
        wp = window_probs(
            trained,
            stream,
            batch_size or c.optim.batch_size_val,
            precision_for(trained, bf16),
            progress,
            Path(video).name,
        )
        rows, probs = timeline_rows(wp, trained.class_names, topk)
        meta = {
            "fps": reader.fps,
            "num_video_frames": reader.num_frames,
            "stride_s": stride_s,
            "clip_frames": c.model.num_frames,
            "sampling_rate": c.data.sampling_rate,
            "crops": c.data.test_num_crop,
            "classes": trained.class_names,
            "max_buffered_frames": stream.max_buffered,
        }
    return rows, probs, meta


@dataclass
class Timeline:
    """One video's timeline as written: its files and segments, and how it was sliced."""

    video: str
    windows: int
    clip_frames: int
    sampling_rate: int
    files: dict[str, str]
    segments: list[dict]

    def summary(self) -> dict:
        """What ``--json`` prints for the video."""
        return {"video": self.video, "files": self.files, "segments": self.segments}


def timelines(
    run: Path,
    videos: list[str],
    out: Path,
    which: str = "best",
    stride_s: float = 1.0,
    topk: int = 5,
    batch_size: int | None = None,
    bf16: bool = False,
    progress: bool = True,
) -> Iterator[Timeline]:
    """Write each video's timeline into ``out``; yields each as soon as it is written, so a
    caller can report long videos one by one."""
    check_videos(videos)
    stems = [Path(v.rstrip("/")).stem for v in videos]
    twice = next((s for s in stems if stems.count(s) > 1), None)
    if twice is not None:
        raise DataError(
            f"two videos are named {twice!r}: their timelines would overwrite each "
            "other in --out; run them separately with different --out"
        )
    trained = open_run(run, which)
    for video in videos:
        rows, probs, meta = predict_timeline(
            trained, video, stride_s, topk, batch_size, bf16, progress
        )
        paths = write_timeline(video, rows, probs, trained.class_names, out, meta)
        yield Timeline(video, len(rows), meta["clip_frames"], meta["sampling_rate"],
                       {k: str(p) for k, p in paths.items()}, segments(rows))  # fmt: skip
