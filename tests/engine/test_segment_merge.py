"""``--segment_merge tokens``: per crop, the segments' tokens joined before the head, as
Meta's V-JEPA 2 evaluation does; whole videos per item so sharding never splits one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from aptune.config import RunConfig
from aptune.data.datasets import ClipItem, collate_clips
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import Precision, predict_views
from aptune.engine.metrics import merge_views
from aptune.engine.segment_merge import (
    TokenMerge,
    WholeVideos,
    forward_views,
    token_merge,
    videos_per_batch,
)
from aptune.models.vjepa2 import create_vjepa2

S, C, T, PX = 2, 2, 4, 32  # segments, crops, frames, pixels


class ViewList:
    """A test dataset's shape: item ``video * views + segment * crops + crop``."""

    def __init__(self, clips: torch.Tensor, labels: list[int]) -> None:
        self.clips, self.labels = clips, labels  # clips (V, S, C, 3, T, H, W)
        self.views_per_video = S * C
        self.video_paths = [f"v{i}.mp4" for i in range(len(labels))]
        self.class_names = None

    def __len__(self) -> int:
        return len(self.labels) * self.views_per_video

    def __getitem__(self, index: int) -> ClipItem:
        video, view = divmod(index, self.views_per_video)
        segment, crop = divmod(view, C)
        return ClipItem(self.clips[video, segment, crop][None], self.labels[video], video, view)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_vjepa2("vjepa2_vit_nano_patch16_256", num_classes=5, num_frames=T, img_size=PX)
    with torch.no_grad():  # a head that separates the classes (the init is scaled by 1e-3)
        net.head.weight.normal_()
    return net.eval()


@pytest.fixture(scope="module")
def views():
    torch.manual_seed(1)
    return ViewList(torch.randn(3, S, C, 3, T, PX, PX), [0, 3, 1])


def by_hand(model, clips: torch.Tensor) -> torch.Tensor:
    """(S, C, 3, T, H, W) of one video -> (C, classes): crop by crop, segment by segment."""
    rows = []
    for c in range(C):
        tokens = torch.cat([model.forward_tokens(clips[s, c][None]) for s in range(S)], dim=1)
        rows.append(model.forward_head(model.pooler(tokens))[0])
    return torch.stack(rows)


@torch.no_grad()
def test_merged_logits_equal_a_hand_computation(model, views):
    merge = TokenMerge(S, C)
    batch = collate_clips([WholeVideos(views)[v] for v in range(3)])
    assert batch.clips.shape[0] == 3 * S * C
    logits, videos, crops, labels = forward_views(model, batch, torch.device("cpu"), merge)
    want = torch.cat([by_hand(model, views.clips[v]) for v in range(3)])
    torch.testing.assert_close(logits, want, rtol=1e-5, atol=1e-5)
    assert videos.tolist() == [0, 0, 1, 1, 2, 2] and crops.tolist() == [0, 1] * 3
    assert labels.tolist() == [0, 0, 3, 3, 1, 1]
    # the joined sequence differs from each segment alone: the merge is not a no-op
    alone = model(views.clips[0, 0])
    assert not torch.allclose(logits[:C], alone, atol=1e-4)


@torch.no_grad()
def test_video_score_is_the_mean_softmax_over_crops(model, views):
    merge = TokenMerge(S, C)
    batches = [collate_clips([WholeVideos(views)[v]]) for v in range(3)]
    records = predict_views(model, batches, DistInfo(), Precision(), progress=False, merge=merge)
    ids, probs, labels, per_video = merge_views([records])
    assert ids.tolist() == [0, 1, 2] and labels.tolist() == [0, 3, 1] and per_video == C
    for v in range(3):
        want = torch.softmax(by_hand(model, views.clips[v]), dim=-1).mean(dim=0)
        np.testing.assert_allclose(probs[v], want.numpy(), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_sharded_ranks_keep_each_video_whole_and_padding_collapses(model, views):
    """Two ranks, three videos: the sampler pads to four items; each rank encodes whole
    videos and the gathered records give every video once, with all its crops."""
    grouped, merge = WholeVideos(views), TokenMerge(S, C)
    records = []
    for rank in range(2):
        order = list(DistributedSampler(grouped, num_replicas=2, rank=rank, shuffle=False))
        batch = collate_clips([grouped[i] for i in order])
        assert set(batch.video_index.tolist()) == set(order)  # whole videos only
        records.append(predict_views(model, [batch], DistInfo(), Precision(), False,
                                     merge=merge))  # fmt: skip
    ids, probs, _, per_video = merge_views(records)
    assert ids.tolist() == [0, 1, 2] and per_video == C
    single = merge_views([predict_views(model, [collate_clips([grouped[i] for i in range(3)])],
                                        DistInfo(), Precision(), False, merge=merge)])  # fmt: skip
    np.testing.assert_allclose(probs, single[1], rtol=1e-6, atol=1e-7)


def test_softmax_merge_keeps_one_row_per_view(model, views):
    batch = collate_clips([views[i] for i in range(S * C)])
    with torch.no_grad():
        logits, videos, view_ids, _ = forward_views(model, batch, torch.device("cpu"), None)
    assert logits.shape[0] == S * C and view_ids.tolist() == list(range(S * C))
    assert videos.tolist() == [0] * (S * C)


@pytest.mark.parametrize(
    "model_name, flag, tokens",
    [("vjepa2_vit_nano_patch16_256", "auto", True), ("vit_nano", "auto", False),
     ("vjepa2_vit_nano_patch16_256", "softmax", False), ("vit_nano", "tokens", True)],
)  # fmt: skip
def test_auto_merges_tokens_for_vjepa2_only(model_name, flag, tokens):
    cfg = RunConfig.from_values({"model": model_name, "segment_merge": flag,
                                 "test_num_segment": 2, "test_num_crop": 3})  # fmt: skip
    assert (token_merge(cfg) is not None) == tokens
    if tokens:
        assert token_merge(cfg) == TokenMerge(2, 3)


def test_batch_size_val_counts_clips_of_whole_videos():
    assert videos_per_batch(14, TokenMerge(2, 3)) == 2
    assert videos_per_batch(4, TokenMerge(8, 3)) == 1  # a video larger than the batch: one
