"""VideoMAE ViT in its fine-tuning form, readable top to bottom.

The layout of parameters (``patch_embed.proj``, ``blocks.N.attn.qkv``, ``attn.q_bias``,
``fc_norm``, ``head`` ...) is the one of VideoMAE's fine-tuned checkpoints, so those load
without renaming. Tuning methods attach to three hooks instead of forking the classes:

* ``VisionTransformer.kv_prompts``  - extra key/value tokens per block (APT);
* ``VisionTransformer.seq_prompts`` - tokens inserted into the sequence (VPT);
* ``Block.mlp_adapter`` / ``Attention.qkv_delta`` - parallel branches (AdaptFormer, LoRA).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aptune.models.attention_kernels import (
    append_kv,
    plain_attention,
    recompute_attention,
    split_heads,
)
from aptune.models.layers import DropPath, PatchEmbed, init_weights, sinusoid_table
from aptune.models.rope import apply_rope
from aptune.models.sizes import MLP_RATIOS, MODEL_SIZES, model_spec

AttnImpl = Literal["sdpa", "plain", "recompute"]
ATTN_IMPLS: tuple[str, ...] = ("sdpa", "plain", "recompute")
LN_EPS = 1e-6
#: VideoMAE V2's cap on the cosine-attention logit scale: exp(scale) <= 100.
LOGIT_SCALE_MAX = math.log(100.0)


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE's q/v-only bias and optional extra K/V tokens.

    ``extra_kv = (k_extra, v_extra)`` of shape (M, d) (shared across heads, as APT's prompts)
    or (B, h, M, d) is appended after the data keys/values; queries stay the N data tokens,
    so the output keeps N tokens.

    ``cos_attn`` is VideoMAE V2's cosine attention: q and k are L2-normalised over the head
    dimension (the extra keys too, after the concatenation) and the logits are multiplied
    by ``exp(min(scale, ln 100))`` with a learnable per-head ``scale`` of shape (h, 1, 1)
    instead of ``d ** -0.5``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        attn_impl: AttnImpl = "sdpa",
        cos_attn: bool = False,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        full_qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.cos_attn = cos_attn
        self.scale: Any
        if cos_attn:  # V2's init: ln(10) per head; the name "scale" is what its files use
            self.scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
        else:
            self.scale = self.head_dim**-0.5
        self.attn_impl: AttnImpl = attn_impl
        # V-JEPA 2: one bias for q, k and v (``qkv.bias``); VideoMAE: q and v biases only
        self.qkv = nn.Linear(dim, 3 * dim, bias=full_qkv_bias)
        if qkv_bias and not full_qkv_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.qkv_delta: nn.Module | None = None  # LoRA hook: adds to the qkv projection
        self.attn_drop = attn_drop  # dropout on the probabilities: SDPA's dropout_p
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, N, D = x.shape
        bias = self.qkv.bias
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias)  # (B, N, 3D)
        if self.qkv_delta is not None:
            qkv = qkv + self.qkv_delta(x)
        q, k, v = split_heads(qkv, self.num_heads)  # each (B, h, N, d)
        if rope is not None:  # rotary positions on the data tokens, before any prompt joins
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        extra = None  # APT's prompt keys and values, (B, h, M, d) each
        if extra_kv is not None:
            k_extra, v_extra = extra_kv
            shape = (B, self.num_heads, k_extra.shape[-2], self.head_dim)
            extra = (k_extra.to(k.dtype).expand(shape), v_extra.to(v.dtype).expand(shape))
        scale = None  # SDPA's default: d ** -0.5
        if self.cos_attn:  # the logit scale goes into q, so both paths stay one matmul
            logit_scale = self.scale.clamp(max=LOGIT_SCALE_MAX).exp().to(q.dtype)  # (h, 1, 1)
            q = F.normalize(q, dim=-1) * logit_scale  # (B, h, N, d)
            k = F.normalize(k, dim=-1)  # (B, h, N, d); the prompt keys normalised too
            if extra is not None:
                extra = (F.normalize(extra[0], dim=-1), extra[1])
            scale = 1.0
        explicit = 1.0 if self.cos_attn else self.scale  # aptune's kernels take it explicitly
        prompts_only = extra is not None and not (
            q.requires_grad or k.requires_grad or v.requires_grad
        )
        p_drop = self.attn_drop if self.training else 0.0
        if p_drop > 0:  # only SDPA drops probabilities; aptune's kernels have no dropout
            k, v = append_kv(k, v, extra)  # (B, h, N+M, d)
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p_drop, scale=scale)
        elif self.attn_impl == "recompute" or (self.attn_impl == "sdpa" and prompts_only):
            # SDPA's forward and saved set; a GEMM-speed backward that, where only the
            # prompts need a gradient (the first APT block), works on their rows alone
            out = recompute_attention(q, k, v, explicit, extra)
        else:
            k, v = append_kv(k, v, extra)  # (B, h, N+M, d)
            if self.attn_impl == "sdpa":
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # (B, h, N, d)
            else:  # scores (B, h, N, N+M) kept for backward; row-major matmuls
                out = plain_attention(q, k, v, explicit)  # (B, h, N, d)
        out = out.transpose(1, 2).reshape(B, N, D)
        return self.proj_drop(self.proj(out))


def check_attn_impl(impl: str) -> None:
    """One-line error for an unknown attention kernel name."""
    if impl not in ATTN_IMPLS:
        raise ValueError(f"attn_impl must be one of {', '.join(ATTN_IMPLS)}; got {impl!r}")


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 -> dropout (VideoMAE drops after fc2 only, not after the GELU)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block; optional layer-scale (``init_values``) and MLP adapter."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_path: float = 0.0,
        init_values: float | None = None,
        attn_impl: AttnImpl = "sdpa",
        norm_eps: float = LN_EPS,
        cos_attn: bool = False,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        full_qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads, qkv_bias, attn_impl, cos_attn, attn_drop, drop, full_qkv_bias
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        if init_values:
            self.gamma_1 = nn.Parameter(init_values * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_values * torch.ones(dim))
        else:
            self.gamma_1 = self.gamma_2 = None
        self.mlp_adapter: nn.Module | None = None  # AdaptFormer hook: parallel to the MLP

    def forward(
        self,
        x: torch.Tensor,
        extra_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        a = self.attn(self.norm1(x), extra_kv, rope)
        x = x + self.drop_path(a if self.gamma_1 is None else self.gamma_1 * a)
        m = self.mlp(self.norm2(x))
        m = m if self.gamma_2 is None else self.gamma_2 * m
        if self.mlp_adapter is not None:
            m = m + self.mlp_adapter(x)
        return x + self.drop_path(m)


class VisionTransformer(nn.Module):
    """VideoMAE encoder with mean pooling and a linear head: (B, 3, T, H, W) -> (B, classes)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        fc_drop_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        init_values: float | None = None,
        init_scale: float = 0.001,
        num_frames: int = 16,
        tubelet_size: int = 2,
        attn_impl: AttnImpl = "sdpa",
        norm_eps: float = LN_EPS,
        cos_attn: bool = False,
        use_checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_attn_impl(attn_impl)
        self.num_classes, self.embed_dim, self.depth = num_classes, embed_dim, depth
        self.num_heads, self.init_scale, self.cos_attn = num_heads, init_scale, cos_attn
        self.num_frames, self.img_size, self.tubelet_size = num_frames, img_size, tubelet_size
        self.patch_embed = PatchEmbed(
            img_size, patch_size, in_chans, embed_dim, num_frames, tubelet_size
        )
        self.register_buffer(
            "pos_embed", sinusoid_table(self.patch_embed.num_patches, embed_dim), persistent=False
        )
        self.pos_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], init_values, attn_impl,
                  norm_eps, cos_attn, drop_rate, attn_drop_rate)  # fmt: skip
            for i in range(depth)
        )
        self.fc_norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.fc_dropout = nn.Dropout(fc_drop_rate) if fc_drop_rate > 0 else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.kv_prompts: nn.Module | None = None  # APT hook: block index -> (k, v) or None
        self.seq_prompts: nn.Module | None = None  # VPT hook: insert/drop tokens
        self.tuning_configs: list[Any] = []  # the attached methods' configs (tuning/)
        self.class_names: list[str] | None = None  # a trained run's classes (load_run)
        self.run_config: dict[str, Any] | None = None  # a trained run's options (load_run)
        self.grad_checkpointing = use_checkpoint  # the reference's name; timm's attribute
        self.apply(init_weights)
        self.reset_head(num_classes)

    # -- configuration -------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    def set_attn_impl(self, impl: AttnImpl) -> None:
        """Switch every block's attention kernel (sdpa, plain or recompute)."""
        check_attn_impl(impl)
        for blk in self.blocks:
            blk.attn.attn_impl = impl

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Keep only each block's input for backward and recompute the rest there (timm's
        name): activation memory for up to one more forward of each block per step."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """V2's cosine-attention logit scales (its optimiser skips them by the name "scale")."""
        return {n for n, _ in self.named_parameters() if n.endswith("attn.scale")}

    def reset_head(self, num_classes: int) -> None:
        """New head with the reference init: trunc-normal(0.02), then scaled by init_scale."""
        self.num_classes = num_classes
        if num_classes <= 0:
            self.head = nn.Identity()
            return
        self.head = nn.Linear(self.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.weight.mul_(self.init_scale)
            self.head.bias.mul_(self.init_scale)

    def no_grad_prefix(self) -> int:
        """Number of leading blocks whose forward needs no autograd graph.

        Nothing before the first block that owns (or receives) a trainable tensor can get
        a gradient, so those blocks run under ``torch.no_grad()`` - APT with prompts from
        block k on skips the graph for blocks 0..k-1.
        """
        if any(p.requires_grad for p in self.patch_embed.parameters()):
            return 0
        if self.seq_prompts is not None and any(
            p.requires_grad for p in self.seq_prompts.parameters()
        ):
            return min(getattr(self.seq_prompts, "first_block", 0), self.depth)
        first_kv = self.depth
        if self.kv_prompts is not None and any(
            p.requires_grad for p in self.kv_prompts.parameters()
        ):
            first_kv = getattr(self.kv_prompts, "first_block", 0)
        for i, blk in enumerate(self.blocks[: min(first_kv, self.depth)]):
            if any(p.requires_grad for p in blk.parameters()):
                return i
        return min(first_kv, self.depth)

    # -- forward -------------------------------------------------------------------------
    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> the encoder's output tokens (B, N, D), before pooling
        (VideoMAE: the last block's; a backbone with a final norm: after it)."""
        rope = self.rotary_positions(x)
        frozen = self.no_grad_prefix() if torch.is_grad_enabled() else 0
        with torch.no_grad() if frozen else contextlib.nullcontext():
            x = self.embed_tokens(x)  # (B, N, D)
            x = self._run_blocks(x, 0, frozen, rope)
        x = self._run_blocks(x, frozen, self.depth, rope)
        if self.seq_prompts is not None:
            x = self.seq_prompts.drop(x)  # (B, N, D): the head sees data tokens only
        return self.finish_tokens(x)

    def embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Clips -> the first block's input: tubelet embedding + the position table."""
        x = self.patch_embed(x)
        return self.pos_drop(x + self.pos_embed.to(dtype=x.dtype))

    def rotary_positions(self, x: torch.Tensor) -> tuple | None:
        """(cos, sin) tables of rotary positions for the input's grid; VideoMAE has none."""
        return None

    def finish_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The last block's tokens -> the encoder's output (VideoMAE: as they are)."""
        return x

    def pool_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> the features the head takes (B, D): mean, then ``fc_norm``."""
        return self.fc_norm(tokens.mean(dim=1))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) -> pooled, normalised features (B, D)."""
        return self.pool_tokens(self.forward_tokens(x))

    def _run_blocks(
        self, x: torch.Tensor, start: int, end: int, rope: tuple | None = None
    ) -> torch.Tensor:
        """Blocks ``start..end-1``, checkpointed but for the last: backward would recompute
        that one first, while every kept input is still alive, so it would lower no peak."""
        ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(start, end):
            if ckpt and i < end - 1:
                # non-reentrant: restores the RNG (same dropout masks) and autocast state
                x = checkpoint(self._block_step, x, i, rope, use_reentrant=False)
            else:
                x = self._block_step(x, i, rope)
        return x

    def _block_step(self, x: torch.Tensor, i: int, rope: tuple | None = None) -> torch.Tensor:
        """Block ``i`` with its method hooks: the unit that checkpointing recomputes, so
        VPT's inserted tokens and APT's prompts (and their dropout) are recomputed too."""
        if self.seq_prompts is not None:
            x = self.seq_prompts.insert(x, i)  # (B, P + N, D)
        extra = self.kv_prompts(i) if self.kv_prompts is not None else None
        return self.blocks[i](x, extra, rope)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# -- named sizes: the table is models/sizes.py ---------------------------------------
def create_vit(
    name: str,
    num_classes: int = 400,
    num_frames: int = 16,
    img_size: int = 224,
    tubelet_size: int = 2,
    drop_path: float = 0.0,
    fc_drop_rate: float = 0.0,
    init_scale: float = 0.001,
    init_values: float | None = None,
    attn_impl: AttnImpl = "sdpa",
    drop: float = 0.0,
    attn_drop_rate: float = 0.0,
    **overrides: Any,
) -> VisionTransformer:
    """Build a named VideoMAE ViT; ``overrides`` may change any constructor argument
    (embed_dim, depth, num_heads, mlp_ratio, patch_size, cos_attn, norm_eps ...)."""
    kw = {**model_spec(name), **overrides}
    return VisionTransformer(
        img_size=img_size, num_classes=num_classes, num_frames=num_frames,
        tubelet_size=tubelet_size, drop_path_rate=drop_path, drop_rate=drop,
        attn_drop_rate=attn_drop_rate, fc_drop_rate=fc_drop_rate, init_scale=init_scale,
        init_values=init_values, attn_impl=attn_impl, **kw,
    )  # fmt: skip


def _named(name: str) -> Callable[..., VisionTransformer]:
    def constructor(**kwargs: Any) -> VisionTransformer:
        if "input_size" in kwargs:  # the reference flag's name
            kwargs["img_size"] = kwargs.pop("input_size")
        return create_vit(name, **kwargs)

    constructor.__name__ = name
    constructor.__doc__ = f"VideoMAE {name}: D, depth, heads = {MODEL_SIZES[name]}."
    return constructor


vit_nano_patch16_224 = _named("vit_nano_patch16_224")
vit_micro_patch16_224 = _named("vit_micro_patch16_224")
vit_tiny_patch16_224 = _named("vit_tiny_patch16_224")
vit_small_patch16_224 = _named("vit_small_patch16_224")
vit_base_patch16_224 = _named("vit_base_patch16_224")
vit_large_patch16_224 = _named("vit_large_patch16_224")
vit_huge_patch16_224 = _named("vit_huge_patch16_224")
vit_giant_patch14_224 = _named("vit_giant_patch14_224")  # VideoMAE V2

__all__ = [
    "Attention",
    "Block",
    "VisionTransformer",
    "MLP_RATIOS",
    "MODEL_SIZES",
    "create_vit",
    "model_spec",
]
