"""Meta's V-JEPA 2 video encoders with aptune's method hooks and an attentive or linear head.

The encoder: tubelet 2 x patch 16 embedding, pre-norm blocks with a fused ``qkv`` (bias on
q, k and v), 3D rotary positions on q and k (``models/rope.py``; no absolute position
table), exact GELU, LayerNorm eps 1e-6 and a final ``norm``. Parameter names are those of
Meta's encoder files after ``module.backbone.`` (``patch_embed.proj``, ``blocks.N.attn.qkv``,
``norm``), so they load without renaming.

It is a :class:`VisionTransformer` in everything a tuning method sees: ``blocks`` with
``attn.qkv_delta`` (LoRA) and ``mlp_adapter`` (AdaptFormer), ``kv_prompts`` (APT: prompt
keys and values join after the rotation, unrotated and position-free), ``seq_prompts``
(VPT: inserted tokens carry no position), ``depth``, ``head_dim``. Its head is
``--head attentive`` (Meta's attentive classifier: ``pooler`` + ``head``) or
``--head linear`` (mean of the tokens, ``fc_norm``, ``head``).

V-JEPA 2.1 (``version="2.1"``, the ``vjepa2_1_*`` names) is the same encoder with a learned
``video_mod_embed`` (1, 1, D) added to every token after the patch embedding, interleaved
rotary frequencies with the height and width positions interpolated onto its 16 x 16
pre-training grid (``rope_tables(..., interleaved=True, spatial_scale_to=16)``), and its
last hierarchical norm (Meta's ``norms_block[-1]``) as the final ``norm``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from aptune.models.attentive_pooler import AttentivePooler
from aptune.models.layers import PatchEmbed, init_weights
from aptune.models.rope import rope_tables
from aptune.models.sizes import VJEPA2_INPUT_SIZES, full_name, is_vjepa2_1, model_spec
from aptune.models.vit import AttnImpl, Block, VisionTransformer, check_attn_impl

HeadKind = Literal["attentive", "linear"]
HEAD_KINDS: tuple[str, ...] = ("attentive", "linear")
Version = Literal["2", "2.1"]
VERSIONS: tuple[str, ...] = ("2", "2.1")
#: the height and width token grid V-JEPA 2.1 interpolates its rotary positions onto
VJEPA2_1_ROPE_GRID = 16


class VJepa2(VisionTransformer):
    """V-JEPA 2 encoder + head: (B, 3, T, H, W) -> (B, classes).

    ``pooler_heads`` / ``pooler_eps`` follow the checkpoint: Meta's probes use 16 heads and
    LayerNorm eps 1e-5, Hugging Face's classifier the encoder's heads and eps 1e-6.
    ``version="2.1"`` builds V-JEPA 2.1 (``video_mod_embed``, its rotary positions).
    """

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 400,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_frames: int = 16,
        tubelet_size: int = 2,
        head: HeadKind = "attentive",
        pooler_heads: int = 16,
        pooler_depth: int = 3,
        pooler_eps: float = 1e-5,
        fc_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_scale: float = 0.001,
        attn_impl: AttnImpl = "sdpa",
        norm_eps: float = 1e-6,
        use_checkpoint: bool = False,
        version: Version = "2",
    ) -> None:
        nn.Module.__init__(self)
        check_attn_impl(attn_impl)
        if head not in HEAD_KINDS:
            raise ValueError(f"head must be one of {', '.join(HEAD_KINDS)}; got {head!r}")
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}; got {version!r}")
        self.version: Version = version
        self.num_classes, self.embed_dim, self.depth = num_classes, embed_dim, depth
        self.num_heads, self.init_scale, self.cos_attn = num_heads, init_scale, False
        self.num_frames, self.img_size, self.tubelet_size = num_frames, img_size, tubelet_size
        self.head_kind: HeadKind = head
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size, fixed_grid=False
        )
        # V-JEPA 2.1: a learned embedding that marks the tokens as video (its image one is
        # not kept: aptune is video only)
        self.video_mod_embed: nn.Parameter | None = None
        if version == "2.1":
            self.video_mod_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))
            nn.init.trunc_normal_(self.video_mod_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, True, rates[i], None, attn_impl, norm_eps,
                  False, drop_rate, attn_drop_rate, full_qkv_bias=True)  # fmt: skip
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.apply(init_weights)
        self.pooler: AttentivePooler | None = None
        self.fc_norm: nn.Module = nn.Identity()
        if head == "attentive":
            self.pooler = AttentivePooler(embed_dim, pooler_heads, pooler_depth, 4.0, pooler_eps)
        else:
            self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.kv_prompts: nn.Module | None = None
        self.seq_prompts: nn.Module | None = None
        self.tuning_configs: list[Any] = []
        self.class_names: list[str] | None = None
        self.run_config: dict[str, Any] | None = None
        self.grad_checkpointing = use_checkpoint
        self.reset_head(num_classes)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Tubelet embedding (+ V-JEPA 2.1's ``video_mod_embed``); no position table."""
        x = self.patch_embed(x)  # (B, N, D)
        if self.video_mod_embed is not None:
            x = x + self.video_mod_embed.to(dtype=x.dtype)
        return self.pos_drop(x)

    def rotary_positions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotary tables of the input's own token grid, so any T (multiple of 2) and H, W
        (multiples of 16) run, as in Meta's code (V-JEPA 2.1 scales the height and width
        positions onto its 16 x 16 pre-training grid)."""
        return self.rope_tables(self.patch_embed.grid_of(x), x.device)

    def finish_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The final norm: ``forward_tokens`` returns the encoder's output after it."""
        return self.norm(x)

    def rope_tables(
        self, grid: tuple[int, int, int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This version's rotary (cos, sin) tables for a token grid."""
        if self.version == "2.1":
            return rope_tables(grid, self.head_dim, device, interleaved=True,
                               spatial_scale_to=VJEPA2_1_ROPE_GRID)  # fmt: skip
        return rope_tables(grid, self.head_dim, device)

    def no_grad_prefix(self) -> int:
        """As the ViT's; a trainable ``video_mod_embed`` (end2end) needs every block's graph."""
        if self.video_mod_embed is not None and self.video_mod_embed.requires_grad:
            return 0
        return super().no_grad_prefix()

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, D): the attentive pooler, or the mean and ``fc_norm``.

        Tokens of several clips of one video concatenated along N (Meta's multi-segment
        evaluation) pool the same way.
        """
        if self.pooler is not None:
            return self.pooler(tokens)
        return self.fc_norm(tokens.mean(dim=1))


def create_vjepa2(
    name: str,
    num_classes: int = 400,
    num_frames: int = 16,
    img_size: int | None = None,
    tubelet_size: int = 2,
    drop_path: float = 0.0,
    fc_drop_rate: float = 0.0,
    init_scale: float = 0.001,
    attn_impl: AttnImpl = "sdpa",
    drop: float = 0.0,
    attn_drop_rate: float = 0.0,
    head: HeadKind = "attentive",
    **overrides: Any,
) -> VJepa2:
    """Build a named V-JEPA 2 or 2.1 encoder + head; ``img_size`` defaults to the size's crop
    (256, or 384 for ``vjepa2_vit_giant_patch16_384`` and every ``vjepa2_1_*``); ``overrides``
    may change any constructor argument (``pooler_heads``, ``pooler_eps``, ``norm_eps`` ...).
    ``vjepa2_1_*`` names build ``version="2.1"``."""
    kw = {"version": "2.1" if is_vjepa2_1(name) else "2", **model_spec(name), **overrides}
    return VJepa2(
        img_size=img_size or VJEPA2_INPUT_SIZES[full_name(name)], num_classes=num_classes,
        num_frames=num_frames, tubelet_size=tubelet_size, drop_path_rate=drop_path,
        drop_rate=drop, attn_drop_rate=attn_drop_rate, fc_drop_rate=fc_drop_rate,
        init_scale=init_scale, attn_impl=attn_impl, head=head, **kw,
    )  # fmt: skip


__all__ = ["HEAD_KINDS", "VERSIONS", "VJEPA2_1_ROPE_GRID", "VJepa2", "create_vjepa2"]
