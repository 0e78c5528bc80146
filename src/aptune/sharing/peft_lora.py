"""A LoRA run as a real PEFT adapter for ``transformers``' ``VideoMAEForVideoClassification``.

aptune fuses q, k, v into ``attn.qkv`` and keeps one LoRA (A, B) per targeted third
(``tuning/lora.py``, ``QkvLoRA``); transformers keeps three linears. So the names map one to
one, with no arithmetic:

    blocks.N.attn.qkv_delta.lora.{q,k,v}.lora_{A,B}  ->  videomae.encoder.layer.N.attention.
                                                         attention.{query,key,value}.lora_{A,B}.weight
    blocks.N.attn.proj.lora.lora_{A,B}               ->  ...layer.N.attention.output.dense...
    blocks.N.mlp.fc1.lora.lora_{A,B}                 ->  ...layer.N.intermediate.dense...
    blocks.N.mlp.fc2.lora.lora_{A,B}                 ->  ...layer.N.output.dense...
    head.*, fc_norm.*                                ->  classifier.*, fc_norm.* (modules_to_save)

each under PEFT's ``base_model.model.`` prefix. Both scale the update by ``alpha / r``
(``use_rslora`` off), so ``r`` and ``lora_alpha`` carry over as they are. Only a pure LoRA
run on a VideoMAE backbone that ``transformers`` can load (a Hugging Face folder or Hub id)
fits; anything else is refused with one line naming ``--format adapter``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from aptune.config import RunConfig
from aptune.models.checkpoint_io import is_hf_folder
from aptune.models.sizes import is_vjepa2
from aptune.sharing.errors import SharingError
from aptune.tuning import MethodConfig

PREFIX = "base_model.model."
_QKV = {"q": "query", "k": "key", "v": "value"}
_LINEARS = {"attn.proj": "attention.output.dense", "mlp.fc1": "intermediate.dense",
            "mlp.fc2": "output.dense"}  # fmt: skip
#: --lora_targets -> PEFT's target_modules (suffixes of module names)
TARGET_MODULES = {
    "qv": ["query", "value"],
    "qkv": ["query", "key", "value"],
    "all": ["query", "key", "value", "attention.output.dense", "intermediate.dense",
            "output.dense"],
}  # fmt: skip
_NAME = re.compile(r"blocks\.(\d+)\.(attn\.qkv_delta\.lora\.([qkv])|[\w.]+?\.lora)\.(lora_[AB])")


def _refuse(why: str) -> SharingError:
    return SharingError(f"--format peft: {why}; export it with --format adapter (aptune's own)")


def peft_name(name: str) -> str:
    """aptune's name of a LoRA or head tensor -> PEFT's key in adapter_model.safetensors."""
    if name.startswith("head."):
        return PREFIX + "classifier." + name.removeprefix("head.")
    if name.startswith("fc_norm."):
        return PREFIX + name
    m = _NAME.fullmatch(name)
    if m is None:
        raise _refuse(f"the run trained {name}, which PEFT's LoRA has no place for")
    layer, where, part, ab = m.groups()
    if part is not None:
        module = f"attention.attention.{_QKV[part]}"
    else:
        module = _LINEARS.get(where.removesuffix(".lora"))
        if module is None:
            raise _refuse(f"no transformers module for {name}")
    return f"{PREFIX}videomae.encoder.layer.{layer}.{module}.{ab}.weight"


def check_peft_fits(cfg: RunConfig, methods: list[MethodConfig], base: dict) -> None:
    """Refuse, in one line, what PEFT on transformers' VideoMAE cannot express."""
    names = [m.name for m in methods]
    if names != ["lora"]:
        raise _refuse(
            f"PEFT has no {'+'.join(names)} for video transformers (its prompt methods are "
            "for language models); only a LoRA run exports to PEFT"
        )
    if is_vjepa2(cfg.model.model):
        raise _refuse(f"{cfg.model.model} is not a VideoMAE model transformers can load")
    source = base.get("base_model_name_or_path")
    if not source:
        raise _refuse("the run had no base model (--finetune) for transformers to load")
    local = base.get("base_model_sha256") is not None
    if local and not is_hf_folder(source):
        raise _refuse(
            f"its base {source} is not a Hugging Face folder or Hub id, so transformers "
            "cannot load it as the base"
        )


def peft_files(
    cfg: RunConfig, methods: list[MethodConfig], tensors: dict[str, torch.Tensor], base: dict
) -> tuple[dict, dict[str, torch.Tensor]]:
    """(PEFT's adapter_config.json, its tensors) for a LoRA run's trainable tensors."""
    check_peft_fits(cfg, methods, base)
    lora = methods[0]
    out = {peft_name(k): v for k, v in tensors.items()}
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "base_model_name_or_path": base["base_model_name_or_path"],
        "revision": base.get("revision"),
        "auto_mapping": {
            "base_model_class": "VideoMAEForVideoClassification",
            "parent_library": "transformers.models.videomae.modeling_videomae",
        },
        "r": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": lora.dropout,
        "target_modules": TARGET_MODULES[lora.targets],
        "modules_to_save": ["classifier", "fc_norm"],
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    return config, out


def peft_logits(folder: Path, base: dict, how: dict, x: torch.Tensor) -> torch.Tensor | None:
    """Logits of the written folder as a PEFT user gets them (transformers' base from its
    recorded source + ``PeftModel``); None when peft or transformers is not installed.
    ``x``: (B, 3, T, H, W), aptune's layout; ``how``: ``from_pretrained`` keywords."""
    try:
        from peft import PeftModel
        from transformers import VideoMAEForVideoClassification
        from transformers.utils import logging as hf_logging
    except ImportError:
        return None
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialised classifier": replaced just below
    try:
        hf = VideoMAEForVideoClassification.from_pretrained(
            base["base_model_name_or_path"], revision=base.get("revision"),
            ignore_mismatched_sizes=True, **how,
        )  # fmt: skip
    finally:
        hf_logging.set_verbosity(verbosity)
    model = PeftModel.from_pretrained(hf, str(folder)).eval()
    with torch.no_grad():
        return model(pixel_values=x.permute(0, 2, 1, 3, 4)).logits  # HF: (B, T, C, H, W)


__all__ = ["TARGET_MODULES", "check_peft_fits", "peft_files", "peft_logits", "peft_name"]
