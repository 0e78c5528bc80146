"""Every transfer type: trainable sets in closed form, and exactly those tensors learn."""

from __future__ import annotations

import pytest
import torch

import aptune
from aptune.tuning import TuningConfigError, parse_transfer_type


def closed_form(D: int, depth: int, heads: int, classes: int, method: str, tokens=2, reparam=True):
    head = 2 * D + D * classes + classes  # fc_norm + head
    if method == "linear":
        return head
    if method == "prompt":
        d = D // heads
        return head + depth * 2 * tokens * d + (depth * 2 * tokens if reparam else 0)
    backbone = (
        3 * 2 * 16 * 16 * D
        + D  # patch embed
        + depth * (2 * 2 * D + 3 * D * D + 2 * D + D * D + D + 2 * (4 * D * D) + 5 * D)
    )
    return backbone + head


@pytest.mark.parametrize(
    "name, D, heads", [("vit_base_patch16_224", 768, 12), ("vit_small_patch16_224", 384, 6)]
)
@pytest.mark.parametrize("method", ["prompt", "linear", "end2end", "random"])
def test_trainable_counts_closed_form(name, D, heads, method):
    m = aptune.build_model(
        name, num_classes=174, transfer_type=method, prompt_num_tokens=2, prompt_reparam=True
    )
    r = aptune.parameter_report(m)
    assert r.trainable == closed_form(D, 12, heads, 174, method)


def test_seed_recipe_count_is_the_issue_figure():
    m = aptune.build_model(
        "vit_base_patch16_224",
        num_classes=174,
        prompt_num_tokens=2,
        prompt_start=0,
        prompt_end=11,
        prompt_dropout=0.1,
        prompt_reparam=True,
    )
    assert aptune.parameter_report(m).trainable == 138_462


@pytest.mark.parametrize("method", ["prompt", "linear", "end2end", "random"])
def test_three_steps_change_exactly_the_trainable_tensors(method):
    torch.manual_seed(0)
    m = aptune.build_model(
        "vit_nano",
        num_classes=4,
        transfer_type=method,
        num_frames=4,
        input_size=32,
        prompt_num_tokens=2,
        prompt_reparam=True,
        prompt_dropout=0.1,
        prompt_start=1,
    )
    before = {k: v.detach().clone() for k, v in m.named_parameters()}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(2, 3, 4, 32, 32), torch.tensor([0, 3])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    changed = {k for k, v in m.named_parameters() if not torch.equal(v, before[k])}
    trainable = {k for k, v in m.named_parameters() if v.requires_grad}
    assert changed == trainable
    if method == "prompt":
        assert trainable == {
            "kv_prompts.prompt_embeddings_k",
            "kv_prompts.prompt_embeddings_v",
            "kv_prompts.prompt_scale",
            "fc_norm.weight",
            "fc_norm.bias",
            "head.weight",
            "head.bias",
        }


def test_prompt_init_bound_and_reparam_scale():
    m = aptune.build_model(
        "vit_small_patch16_224",
        num_classes=2,
        prompt_num_tokens=50,
        prompt_reparam=True,
        num_frames=2,
        input_size=32,
    )
    bound = (6.0 / (3 * 16 * 16 + 64)) ** 0.5
    pk = m.kv_prompts.prompt_embeddings_k
    assert pk.shape == (12, 50, 64)
    assert pk.abs().max() <= bound and pk.abs().max() > 0.9 * bound
    assert torch.equal(m.kv_prompts.prompt_scale, torch.ones(12, 2, 50))
    # max(scale, 1): a scale below one acts as one, above one multiplies
    with torch.no_grad():
        m.kv_prompts.prompt_scale[0, 0, 0] = 0.5
        m.kv_prompts.prompt_scale[0, 1, 0] = 3.0
    m.eval()
    k, v = m.kv_prompts(0)
    torch.testing.assert_close(k[0], pk[0, 0])
    torch.testing.assert_close(v[0], 3.0 * m.kv_prompts.prompt_embeddings_v[0, 0])


def test_prompt_dropout_only_in_training():
    m = aptune.build_model(
        "vit_nano", num_classes=2, prompt_dropout=0.5, num_frames=4, input_size=32
    )
    m.train()
    k_train, _ = m.kv_prompts(0)
    assert (k_train == 0).any()
    m.eval()
    torch.testing.assert_close(m.kv_prompts(0)[0], m.kv_prompts.prompt_embeddings_k[0])


@pytest.mark.parametrize(
    "transfer_type, options, message",
    [
        ("promt", {}, "unknown method 'promt'"),
        ("prompt", {"prompt_num_tokens": 0}, "--prompt_num_tokens must be >= 1"),
        ("prompt", {"prompt_start": 5, "prompt_end": 2}, "--prompt_end"),
        ("prompt", {"prompt_dropout": 1.0}, "--prompt_dropout"),
        ("linear+prompt", {}, "cannot be combined"),
    ],
)
def test_bad_method_options_fail_with_the_flag_name(transfer_type, options, message):
    with pytest.raises(TuningConfigError, match=message):
        parse_transfer_type(transfer_type, options)


def test_prompt_range_past_depth_names_the_depth():
    with pytest.raises(TuningConfigError, match="the model has 2 blocks"):
        aptune.build_model("vit_nano", num_classes=2, prompt_end=11, num_frames=4, input_size=32)
