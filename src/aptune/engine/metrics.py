"""Per-video accuracy from per-view predictions: merge, top-k, per class, confusion.

A test video is seen as ``test_num_segment x test_num_crop`` views, possibly spread over
processes and padded by the distributed sampler; each view is keyed by
``(video_index, view_index)``, so duplicates from padding collapse before the mean of the
softmax over a video's views is taken (the reference's rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aptune.config import ConfigError


def view_probs(logits: torch.Tensor) -> torch.Tensor:
    """A view's class probabilities: the softmax of its logits, computed in fp32."""
    return torch.softmax(logits.float(), dim=-1)


def mean_over_views(probs: torch.Tensor, views: int) -> torch.Tensor:
    """(B * views, C) probabilities of consecutive views -> (B, C): a video's prediction is
    the mean of its views' softmax."""
    return probs.view(-1, views, probs.shape[-1]).mean(dim=1)


class ViewMeans:
    """The same mean where a video's views arrive in any batches, keyed by video index."""

    def __init__(self, num_videos: int, num_classes: int) -> None:
        self.sums = torch.zeros(num_videos, num_classes)
        self.counts = torch.zeros(num_videos)

    def add(self, logits: torch.Tensor, video_index: torch.Tensor) -> None:
        self.sums.index_add_(0, video_index, view_probs(logits).cpu())
        self.counts.index_add_(0, video_index, torch.ones(len(video_index)))

    def means(self) -> torch.Tensor:
        return self.sums / self.counts[:, None]


@dataclass
class ViewRecords:
    """Softmax of each evaluated view with its keys; concatenable across batches/ranks."""

    video_index: list[int] = field(default_factory=list)
    view_index: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)  # each (C,)

    def add(self, video_index, view_index, labels, probs: np.ndarray) -> None:
        self.video_index += [int(v) for v in video_index]
        self.view_index += [int(v) for v in view_index]
        self.labels += [int(v) for v in labels]
        self.probs += list(probs)

    def extend(self, other: ViewRecords) -> None:
        self.add(other.video_index, other.view_index, other.labels, np.asarray(other.probs))


def merge_views(records: list[ViewRecords]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """-> (video ids (V,), mean softmax (V, C), labels (V,), views per video (max))."""
    by_key: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
    for rec in records:
        for vid, view, label, p in zip(rec.video_index, rec.view_index, rec.labels, rec.probs):
            by_key[(vid, view)] = (label, p)  # padding duplicates overwrite themselves
    per_video: dict[int, list[np.ndarray]] = {}
    labels: dict[int, int] = {}
    for (vid, _), (label, p) in sorted(by_key.items()):
        per_video.setdefault(vid, []).append(p)
        labels[vid] = label
    ids = np.array(sorted(per_video), dtype=np.int64)
    if len(ids) == 0:
        return ids, np.zeros((0, 0)), np.zeros(0, dtype=np.int64), 0
    probs = np.stack([np.mean(per_video[v], axis=0) for v in ids])
    views = max(len(per_video[v]) for v in ids)
    return ids, probs, np.array([labels[v] for v in ids], dtype=np.int64), views


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    num_videos: int
    views_per_video: int
    per_class: list[float | None]
    confusion: np.ndarray  # (C, C): rows true class, columns predicted
    video_ids: np.ndarray
    probs: np.ndarray
    labels: np.ndarray

    def summary(self) -> dict:
        return {
            "top1": round(self.top1, 4),
            "top5": round(self.top5, 4),
            "loss": round(self.loss, 6),
            "num_videos": self.num_videos,
            "views_per_video": self.views_per_video,
        }


def evaluate_probs(
    ids: np.ndarray, probs: np.ndarray, labels: np.ndarray, views: int, num_classes: int
) -> EvalResult:
    if len(ids) == 0:
        raise ConfigError("no video was evaluated: the evaluation list is empty")
    k = min(5, num_classes)
    topk = np.argsort(-probs, axis=1)[:, :k]
    top1 = float(np.mean(topk[:, 0] == labels) * 100)
    top5 = float(np.mean((topk == labels[:, None]).any(axis=1)) * 100)
    loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, topk[:, 0]), 1)
    totals = confusion.sum(axis=1)
    per_class = [
        float(confusion[c, c] / totals[c] * 100) if totals[c] else None for c in range(num_classes)
    ]
    return EvalResult(top1, top5, loss, len(ids), views, per_class, confusion, ids, probs, labels)


def write_predictions(
    result: EvalResult, path: Path, video_paths: list[str], class_names: list[str] | None
) -> None:
    """One JSON line per video: path, label, prediction, top-5 with probabilities."""
    name = (lambda c: class_names[c]) if class_names else (lambda c: str(c))
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        for vid, p, label in zip(result.video_ids, result.probs, result.labels):
            order = np.argsort(-p)[:5]
            f.write(
                json.dumps(
                    {
                        "video_index": int(vid),
                        "path": video_paths[vid] if vid < len(video_paths) else None,
                        "label": int(label),
                        "label_name": name(int(label)),
                        "pred": int(order[0]),
                        "pred_name": name(int(order[0])),
                        "correct": bool(order[0] == label),
                        "top5": [[int(c), name(int(c)), round(float(p[c]), 6)] for c in order],
                    }
                )
                + "\n"
            )
    tmp.replace(path)
