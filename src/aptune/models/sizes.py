"""The named VideoMAE ViT sizes as data: width, depth and heads per name.

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
}
MLP_RATIOS: dict[str, float] = {"vit_giant_patch14_224": 48 / 11}


def model_spec(name: str) -> dict[str, Any]:
    """Constructor keywords of a named size; ``vit_base`` is short for ``vit_base_patch16_224``."""
    short = [k for k in MODEL_SIZES if k.startswith(name + "_patch")]
    key = name if name in MODEL_SIZES else (short or [""])[0]
    if key not in MODEL_SIZES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_SIZES)}")
    dim, depth, heads = MODEL_SIZES[key]
    patch = int(re.search(r"_patch(\d+)", key).group(1))  # type: ignore[union-attr]
    mlp_ratio = MLP_RATIOS.get(key, 4.0)
    return dict(embed_dim=dim, depth=depth, num_heads=heads, patch_size=patch, mlp_ratio=mlp_ratio)
