"""The named model sizes as data: width, depth and heads per name (VideoMAE, V-JEPA 2 and
V-JEPA 2.1).

Kept apart from ``vit.py`` because it is a table, not the transformer; ``vit.py``
re-exports it, so ``aptune.models.vit.MODEL_SIZES`` and ``model_spec`` stay where users
import them from.
"""

from __future__ import annotations

import re
from typing import Any

#: name -> (embed_dim, depth, num_heads); the patch size is in the name, MLP ratio 4 unless
#: MLP_RATIOS says otherwise (VideoMAE V2's giant: hidden 6144 = 1408 * 48 / 11).
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "vit_nano_patch16_224": (64, 2, 2),
    "vit_micro_patch16_224": (128, 4, 4),
    "vit_tiny_patch16_224": (192, 12, 3),
    "vit_small_patch16_224": (384, 12, 6),
    "vit_base_patch16_224": (768, 12, 12),
    "vit_large_patch16_224": (1024, 24, 16),
    "vit_huge_patch16_224": (1280, 32, 16),
    "vit_giant_patch14_224": (1408, 40, 16),
    # Meta's V-JEPA 2 encoders (and tiny ones of the same form for tests and demos)
    "vjepa2_vit_nano_patch16_256": (64, 2, 2),
    "vjepa2_vit_micro_patch16_256": (128, 4, 4),
    "vjepa2_vit_large_patch16_256": (1024, 24, 16),
    "vjepa2_vit_huge_patch16_256": (1280, 32, 16),
    "vjepa2_vit_giant_patch16_256": (1408, 40, 22),
    "vjepa2_vit_giant_patch16_384": (1408, 40, 22),
    # Meta's V-JEPA 2.1 encoders (all 384 px; the nano for tests and demos)
    "vjepa2_1_vit_nano_patch16_384": (64, 2, 2),
    "vjepa2_1_vit_base_patch16_384": (768, 12, 12),
    "vjepa2_1_vit_large_patch16_384": (1024, 24, 16),
    "vjepa2_1_vit_giant_patch16_384": (1408, 40, 22),
    "vjepa2_1_vit_gigantic_patch16_384": (1664, 48, 26),
}
MLP_RATIOS: dict[str, float] = {
    "vit_giant_patch14_224": 48 / 11,
    "vjepa2_vit_giant_patch16_256": 48 / 11,  # MLP hidden 6144
    "vjepa2_vit_giant_patch16_384": 48 / 11,
    "vjepa2_1_vit_giant_patch16_384": 48 / 11,  # MLP hidden 6144
    "vjepa2_1_vit_gigantic_patch16_384": 64 / 13,  # MLP hidden 8192 = 1664 * 64 / 13
}
#: V-JEPA 2's and 2.1's pre-training crop per size (the name's last number): the default
#: --input_size of that name.
VJEPA2_INPUT_SIZES: dict[str, int] = {
    name: int(name.rsplit("_", 1)[1]) for name in MODEL_SIZES if name.startswith("vjepa2_")
}


def full_name(name: str) -> str:
    """The table's name of ``name`` (``vit_base`` is short for ``vit_base_patch16_224``)."""
    short = [k for k in MODEL_SIZES if k.startswith(name + "_patch")]
    key = name if name in MODEL_SIZES else (short or [""])[0]
    if key not in MODEL_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SIZES)}")
    return key


def is_vjepa2(name: str | None) -> bool:
    """Is ``name`` one of Meta's V-JEPA 2 or 2.1 encoders (rotary positions, attentive head)?"""
    return bool(name) and str(name).startswith("vjepa2_")


def is_vjepa2_1(name: str | None) -> bool:
    """Is ``name`` one of Meta's V-JEPA 2.1 encoders (``vjepa2_1_*``)?"""
    return bool(name) and str(name).startswith("vjepa2_1_")


def model_spec(name: str) -> dict[str, Any]:
    """Constructor keywords of a named size; ``vit_base`` is short for ``vit_base_patch16_224``."""
    key = full_name(name)
    dim, depth, heads = MODEL_SIZES[key]
    patch = int(re.search(r"_patch(\d+)", key).group(1))  # type: ignore[union-attr]
    mlp_ratio = MLP_RATIOS.get(key, 4.0)
    return dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, mlp_ratio=mlp_ratio)
