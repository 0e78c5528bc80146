"""Test views merged as tokens (``--segment_merge tokens``): Meta's V-JEPA 2 evaluation.

A test video is ``test_num_segment x test_num_crop`` clips. With ``softmax`` merging each
clip is classified alone and the video's score is the mean softmax over all of them
(``metrics.merge_views``). With ``tokens`` merging each segment is encoded alone, then for
each spatial crop the segments' tokens are concatenated along the token axis and pooled
and classified once: one logit row per crop, and the video's score is the mean softmax
over its crops.

Merging tokens needs every view of a video in the same forward, so the test dataset is
regrouped (:class:`WholeVideos`: one item per video, its views in the dataset's order).
Samplers, the distributed one included, then shard whole videos: no process ever holds
part of a video. Each crop's logits are keyed ``(video, crop)``, so the distributed
sampler's padded duplicates still collapse in ``merge_views``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from aptune.config import RunConfig
from aptune.data.datasets import Batch, ClipItem, VideoClipDataset


@dataclass(frozen=True)
class TokenMerge:
    """The test view grid of a run whose segments merge as tokens."""

    segments: int
    crops: int

    @property
    def views(self) -> int:
        return self.segments * self.crops

    def join(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B * segments * crops, N, D) tokens of B whole videos, views segment-major ->
        (B * crops, segments * N, D): per crop, its segments' tokens in time order."""
        n, d = tokens.shape[1:]
        per_crop = tokens.view(-1, self.segments, self.crops, n, d).transpose(1, 2)
        return per_crop.reshape(-1, self.segments * n, d)

    def logits(self, model: nn.Module, clips: torch.Tensor) -> torch.Tensor:
        """(B * segments * crops, 3, T, H, W) of B whole videos -> (B * crops, classes):
        each crop's joined tokens pooled and classified by the model's own head."""
        joined = self.join(model.forward_tokens(clips))
        return model.forward_head(model.pool_tokens(joined))

    def keys(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(video index, crop index, label) of each row :meth:`logits` returns."""
        first = slice(None, None, self.views)  # one row per video
        videos = batch.video_index[first]
        crops = torch.arange(self.crops).repeat(len(videos))
        return (videos.repeat_interleave(self.crops), crops,
                batch.labels[first].repeat_interleave(self.crops))  # fmt: skip


def token_merge(cfg: RunConfig) -> TokenMerge | None:
    """The run's test merging: a :class:`TokenMerge`, or None for the softmax mean."""
    if not cfg.merges_tokens():
        return None
    return TokenMerge(cfg.data.test_num_segment, cfg.data.test_num_crop)


class WholeVideos(Dataset):
    """A test dataset's views grouped per video: item ``v`` stacks every view of video
    ``v`` in the dataset's order (segment-major, so each segment is decoded once)."""

    def __init__(self, views: VideoClipDataset) -> None:
        self.views, self.per_video = views, views.views_per_video

    def __len__(self) -> int:
        return len(self.views) // self.per_video

    def __getitem__(self, video: int):
        items = [self.views[video * self.per_video + j] for j in range(self.per_video)]
        bad = next((it for it in items if not isinstance(it, ClipItem)), None)
        if bad is not None:
            return bad
        return ClipItem(torch.cat([it.clips for it in items]), items[0].label, int(video), 0)

    @property
    def video_paths(self) -> list[str]:
        return self.views.video_paths

    @property
    def class_names(self) -> list[str] | None:
        return self.views.class_names


def forward_views(
    model: nn.Module, batch: Batch, device: torch.device, merge: TokenMerge | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A test batch's logits and their keys ``(logits, video, view, label)``: one row per
    view, or with ``merge`` one per (video, crop). Call under the run's autocast."""
    clips = batch.clips.to(device, non_blocking=True)
    if merge is None:
        return model(clips), batch.video_index, batch.view_index, batch.labels
    return (merge.logits(model, clips), *merge.keys(batch))


def videos_per_batch(batch_size_val: int, merge: TokenMerge) -> int:
    """``--batch_size_val`` counts clips: whole videos hold ``merge.views`` each."""
    return max(1, batch_size_val // merge.views)


__all__ = ["TokenMerge", "WholeVideos", "forward_views", "token_merge", "videos_per_batch"]
