"""The reference's model flags do what they do there: --drop, --attn_drop_rate, --model_prefix."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.models.checkpoint_io import CheckpointError

TINY = dict(model="vit_nano", num_classes=3, num_frames=4, input_size=32)


@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
def test_dropouts_change_training_forwards_only(impl):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 32, 32)
    for flags in (dict(drop=0.3), dict(attn_drop_rate=0.3)):
        model = aptune.build_model(**TINY, transfer_type="end2end", attn_impl=impl, **flags)
        a, b = model(x), model(x)
        assert not torch.allclose(a, b), flags  # a fresh mask per forward
        a.sum().backward()
        assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
        model.eval()
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    plain = aptune.build_model(**TINY, transfer_type="end2end")
    torch.testing.assert_close(plain(x), plain(x), rtol=0, atol=0)  # both 0: deterministic


def test_drop_sits_where_videomae_puts_it():
    model = aptune.build_model(**TINY, transfer_type="linear", drop=0.2, attn_drop_rate=0.1)
    names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    per_block = {f"blocks.{i}.{p}" for i in range(2) for p in ("attn.proj_drop", "mlp.drop")}
    assert names == {"pos_drop"} | per_block
    assert [b.attn.attn_drop for b in model.blocks] == [0.1, 0.1]


def test_model_prefix_selects_and_strips_the_checkpoint_keys(tmp_path):
    source = aptune.build_model(**TINY, transfer_type="end2end")
    state = {f"student.{k}": v for k, v in source.state_dict().items()}
    state["teacher.head.weight"] = torch.zeros(3, 64)
    path = tmp_path / "ckpt.pth"
    torch.save({"model": state}, path)
    model = aptune.build_model(**TINY, transfer_type="end2end", checkpoint=path,
                               model_prefix="student.")  # fmt: skip
    for k, v in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="no key starts with --model_prefix 'ema.'"):
        aptune.build_model(**TINY, checkpoint=path, model_prefix="ema.")
