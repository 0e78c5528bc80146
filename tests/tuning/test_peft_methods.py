"""One table over every tuning method: shapes, closed-form counts, what learns, reloading.

Tiny ViT (D 64, depth 2, heads 2, 4 frames, 32 px: 8 tokens). Each row names the
transfer type, its options, the trainable count as a formula, and whether the untrained
method must compute exactly the frozen backbone's function (zero-init methods and those
adding nothing) or must not (prompts add real inputs to attention).
"""

from __future__ import annotations

import pytest
import torch
from method_checks import assert_steps_change_exactly_the_trainable, assert_zero_init_output
from safetensors.torch import load_file, save_file

import aptune
from aptune.tuning import TuningConfigError, parse_transfer_type
from aptune.tuning.base import is_bias_or_norm
from aptune.tuning.lora import merge_lora

D, DEPTH, HEADS, C = 64, 2, 2, 4
d = D // HEADS
HEAD = 2 * D + D * C + C  # fc_norm + head
PER_LAYER = 2 * 2 * D + 3 * D * D + 2 * D + D * D + D + 2 * 4 * D * D + 4 * D + D
BACKBONE = 3 * 2 * 16 * 16 * D + D + DEPTH * PER_LAYER  # tubelet conv + blocks
P, R, A = 3, 4, 8  # prompt tokens, LoRA rank, adapter bottleneck

APT = DEPTH * 2 * P * d + DEPTH * 2 * P  # Pk, Pv (L, P, d) + scales (L, 2, P)
LORA_QV = DEPTH * 2 * R * (D + D)  # per layer: q and v, each A (r, D) + B (D, r)
LORA_ALL = DEPTH * R * (3 * (D + D) + (D + D) + (D + 4 * D) + (4 * D + D))  # 18 r D
ADAPTER = DEPTH * (D * A + A + A * D + D)  # down (A, D) + bias, up (D, A) + bias
BITFIT = D + DEPTH * (2 * D + 2 * D + D + D + D + 4 * D + D)  # patch; norm1/2; q, v, proj, fc1, fc2

APT_O = dict(prompt_num_tokens=P, prompt_reparam=True)
VPT_O, ADA_O, LORA_O = dict(vpt_num_tokens=P), dict(adapter_dim=A), dict(lora_rank=R)
VPT_DEEP = DEPTH * P * D
CASES = [
    # id, transfer_type, options, trainable count, untrained == frozen backbone
    ("prompt", "prompt", APT_O, HEAD + APT, False),
    ("vpt_shallow", "vpt_shallow", VPT_O, HEAD + P * D, False),
    ("vpt_deep", "vpt_deep", dict(VPT_O, vpt_dropout=0.1), HEAD + VPT_DEEP, False),
    ("adapter", "adapter", ADA_O, HEAD + ADAPTER, True),
    ("adapter_1layer", "adapter", dict(ADA_O, adapter_layers="1"), HEAD + ADAPTER // 2, True),
    ("lora", "lora", LORA_O, HEAD + LORA_QV, True),
    ("lora_all", "lora", dict(lora_rank=R, lora_targets="all"), HEAD + LORA_ALL, True),
    ("bitfit", "bitfit", {}, HEAD + BITFIT, True),
    ("linear", "linear", {}, HEAD, True),
    ("end2end", "end2end", {}, BACKBONE + HEAD, True),
    ("random", "random", {}, BACKBONE + HEAD, True),
    ("prompt+lora", "prompt+lora", dict(APT_O, lora_rank=R), HEAD + APT + LORA_QV, False),
    ("adapter+lora", "adapter+lora", dict(ADA_O, **LORA_O), HEAD + ADAPTER + LORA_QV, True),
    ("vpt_deep+lora", "vpt_deep+lora", dict(VPT_O, lora_rank=R), HEAD + VPT_DEEP + LORA_QV, False),
]  # fmt: skip


def build(transfer_type: str, options: dict, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return aptune.build_model(
        "vit_nano", num_classes=C, transfer_type=transfer_type, num_frames=4, input_size=32,
        **options,
    )  # fmt: skip


def allowed(model: torch.nn.Module, name: str, transfer_type: str) -> bool:
    """Independent statement of each method's trainable set, by parameter name."""
    if transfer_type in ("end2end", "random") or name.startswith(("fc_norm.", "head.")):
        return True
    prefixes = {"prompt": "prompt_", "vpt_shallow": "vpt_", "vpt_deep": "vpt_"}
    prefixes.update(adapter="adapter_", lora="lora_")
    for method in transfer_type.split("+"):
        if method == "bitfit" and is_bias_or_norm(model, name):
            return True
        if method in prefixes and any(p.startswith(prefixes[method]) for p in name.split(".")):
            return True
    return False


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.named_parameters() if v.requires_grad}


X = torch.randn(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 3])


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_method_table(case, tmp_path):
    _, transfer_type, options, count, same_at_init = case
    m = build(transfer_type, options)
    names = dict(m.named_parameters())

    # closed-form trainable count, and exactly the method's names train
    assert aptune.parameter_report(m).trainable == count
    assert {k for k, p in names.items() if p.requires_grad} == {
        k for k in names if allowed(m, k, transfer_type)
    }

    assert_zero_init_output(m, build("linear", {}), X, C, same_at_init)
    assert_steps_change_exactly_the_trainable(m, X, Y)

    # trainable-only checkpoint -> fresh model of the same config -> identical logits.
    # The frozen part comes from the same seed here (from the backbone checkpoint in use).
    m.eval()
    with torch.no_grad():
        trained = m(X)
    path = tmp_path / "trainable.safetensors"
    save_file(trainable_tensors(m), str(path))
    fresh = build(transfer_type, options)
    with torch.no_grad():  # make sure the values really come from the file
        for p in fresh.parameters():
            if p.requires_grad:
                p.normal_()
    result = fresh.load_state_dict(load_file(str(path)), strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) == {k for k, v in names.items() if not v.requires_grad}
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(X), trained)

    # LoRA folds into the weights: same logits, plain backbone state dict
    if "lora" in transfer_type:
        with torch.no_grad():
            assert merge_lora(m) == DEPTH * (4 if options.get("lora_targets") == "all" else 1)
            torch.testing.assert_close(m(X), trained, rtol=1e-5, atol=1e-6)
        assert not any("lora_" in k for k in m.state_dict())
        rest = "+".join(t for t in transfer_type.split("+") if t != "lora") or "linear"
        assert set(m.state_dict()) == set(build(rest, options).state_dict())


def test_vpt_deep_replaces_prompts_and_grows_the_sequence():
    m = build("vpt_deep", dict(vpt_num_tokens=P)).eval()
    seen = []
    for blk in m.blocks:
        blk.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    with torch.no_grad():
        m(X)
    assert [s.shape for s in seen] == [(2, P + 8, D)] * DEPTH
    for i, s in enumerate(seen):  # block i sees layer i's own prompts, not block i-1's outputs
        torch.testing.assert_close(s[:, :P], m.seq_prompts.vpt_prompts[i].expand(2, P, D))
    bound = (6.0 / (3 * 16 * 16 + D)) ** 0.5
    assert 0.9 * bound < m.seq_prompts.vpt_prompts.abs().max() <= bound


@pytest.mark.parametrize(
    "transfer_type, options, message",
    [
        ("vpt_deep", {"vpt_num_tokens": 0}, "--vpt_num_tokens must be an integer >= 1"),
        ("vpt_shallow", {"vpt_dropout": 1.0}, "--vpt_dropout"),
        ("adapter", {"adapter_dim": 0}, "--adapter_dim"),
        ("adapter", {"adapter_scale": 0.0}, "--adapter_scale"),
        ("adapter", {"adapter_layers": "2-x"}, "--adapter_layers '2-x'"),
        ("lora", {"lora_rank": 0}, "--lora_rank"),
        ("lora", {"lora_alpha": -1.0}, "--lora_alpha"),
        ("lora", {"lora_targets": "qk"}, "--lora_targets must be one of qv, qkv, all"),
        ("lora", {"lora_dropout": 1.5}, "--lora_dropout"),
        ("vpt_shallow+vpt_deep", {}, "not both"),
        ("linear+lora", {}, "cannot be combined"),
        ("end2end+adapter", {}, "cannot be combined"),
    ],
)
def test_bad_options_name_the_flag(transfer_type, options, message):
    with pytest.raises(TuningConfigError, match=message):
        parse_transfer_type(transfer_type, options)


def test_adapter_layer_past_depth_names_the_depth():
    with pytest.raises(TuningConfigError, match="--adapter_layers.*the model has 2 blocks"):
        build("adapter", {"adapter_layers": "0-5"})
