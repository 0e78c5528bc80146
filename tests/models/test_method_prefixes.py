"""Checkpoint loading asks the tuning registry which tensors are a method's.

``models/`` may not import ``tuning/``: ``build_model`` passes the registry's prefixes
down. A method registered only in ``tuning`` (its prefix written nowhere in ``models/``)
must therefore load like the built-in ones: absent from a backbone file it keeps its
init, present in a file it marks our own format.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

import aptune
import aptune.models
from aptune.models.checkpoint_files import CheckpointError
from aptune.models.convert import convert_state_dict, load_pretrained
from aptune.models.vit import VisionTransformer
from aptune.tuning import METHODS, MethodConfig, registered_prefixes

PREFIX = "gate_"  # no file of models/ may mention it


@dataclass
class GateConfig(MethodConfig):
    """A made-up method: one per-channel gate per block, named with its own prefix."""

    name: ClassVar[str] = "gate"
    param_prefixes: ClassVar[tuple[str, ...]] = (PREFIX,)

    def attach(self, model: VisionTransformer) -> None:
        for blk in model.blocks:
            blk.gate_scale = nn.Parameter(torch.full((model.embed_dim,), 0.5))


@pytest.fixture
def gate_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(METHODS, GateConfig.name, GateConfig)


def test_registered_prefixes_are_the_methods_own() -> None:
    declared = [p for cfg in METHODS.values() for p in cfg.param_prefixes]
    assert registered_prefixes() == tuple(dict.fromkeys(declared))
    assert {"prompt_", "vpt_", "adapter_", "lora_"} <= set(registered_prefixes())


def test_models_know_no_method_prefix() -> None:
    """The test's premise: the made-up prefix exists only in tuning's registry."""
    folder = Path(aptune.models.__file__).parent
    assert not [p.name for p in folder.glob("*.py") if PREFIX in p.read_text()]


def test_new_method_keeps_its_init_when_loading_a_backbone(
    gate_registered, videomae_finetune_file
) -> None:
    path, ours = videomae_finetune_file
    assert PREFIX in registered_prefixes()
    model = aptune.build_model(
        "vit_nano", num_classes=5, transfer_type="gate", num_frames=4, input_size=32,
        checkpoint=path,
    )  # fmt: skip
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, ours["blocks.0.attn.qkv.weight"])
    assert torch.equal(model.blocks[1].gate_scale, torch.full((64,), 0.5))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"blocks.0.gate_scale", "blocks.1.gate_scale"} <= trainable


def test_new_method_tensors_name_the_format(gate_registered, ckpt) -> None:
    model = ckpt.tiny_model()
    GateConfig().attach(model)
    sd = model.state_dict()
    assert convert_state_dict(sd, method_prefixes=registered_prefixes())[1] == "aptune"
    assert convert_state_dict(sd)[1] == "videomae-finetune"  # the keys are the same


def test_unregistered_prefix_is_a_backbone_key(ckpt, videomae_finetune_file) -> None:
    """Without the method in the registry its tensors are not expected to be missing."""
    model = ckpt.tiny_model()
    GateConfig().attach(model)
    with pytest.raises(CheckpointError, match="2 missing.*gate_scale"):
        load_pretrained(model, videomae_finetune_file[0], method_prefixes=registered_prefixes())
