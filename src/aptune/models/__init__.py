"""VideoMAE ViT models and checkpoint conversion."""

from aptune.models.vit import (
    MODEL_SIZES,
    Attention,
    Block,
    VisionTransformer,
    create_vit,
    model_spec,
    vit_base_patch16_224,
    vit_giant_patch14_224,
    vit_huge_patch16_224,
    vit_large_patch16_224,
    vit_micro_patch16_224,
    vit_nano_patch16_224,
    vit_small_patch16_224,
    vit_tiny_patch16_224,
)

__all__ = [
    "MODEL_SIZES",
    "Attention",
    "Block",
    "VisionTransformer",
    "create_vit",
    "model_spec",
    "vit_base_patch16_224",
    "vit_giant_patch14_224",
    "vit_huge_patch16_224",
    "vit_large_patch16_224",
    "vit_micro_patch16_224",
    "vit_nano_patch16_224",
    "vit_small_patch16_224",
    "vit_tiny_patch16_224",
]
