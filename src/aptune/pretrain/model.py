"""VideoMAE pre-training model: encoder on visible tokens, small decoder, pixel targets.

Parameter names are VideoMAE's own (``encoder.patch_embed.proj``, ``encoder.blocks.N``,
``encoder.norm``, ``encoder_to_decoder``, ``mask_token``, ``decoder.blocks.N``,
``decoder.norm``, ``decoder.head``), so ``state_dict()`` *is* the official pre-training
layout and the file ``aptune pretrain`` writes loads wherever an official VideoMAE
``checkpoint.pth`` does - in particular ``build_model(checkpoint=...)``, which keeps the
``encoder.`` tensors and drops the rest. The blocks are the fine-tuning model's ``Block``,
so the encoder weights map one to one. Both sinusoid tables are fixed, hence buffers that
are not saved (VideoMAE keeps them as plain tensors, also outside the state dict).
"""

from __future__ import annotations

import torch
from torch import nn

from aptune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aptune.models.vit import (
    LN_EPS,
    AttnImpl,
    Block,
    PatchEmbed,
    init_weights,
    model_spec,
    sinusoid_table,
)


class PretrainEncoder(nn.Module):
    """Patch embedding + fixed positions + blocks + final norm, run on visible tokens only.

    Seeing ~10% of the tokens is what makes VideoMAE pre-training cheap: attention cost
    falls with the square of the visible count.
    """

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        num_frames: int,
        tubelet_size: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim, num_frames, tubelet_size)
        n = self.patch_embed.num_patches
        self.register_buffer("pos_embed", sinusoid_table(n, embed_dim), persistent=False)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, True, rates[i], None, attn_impl)
            for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W), mask (B, N) True = hidden -> visible features (B, N_vis, D)."""
        x = self.patch_embed(x)  # (B, N, D)
        x = x + self.pos_embed.to(dtype=x.dtype)
        B, _, D = x.shape
        x = x[~mask].reshape(B, -1, D)  # (B, N_vis, D): same count per clip (tube masking)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class PretrainDecoder(nn.Module):
    """A few narrow blocks over all tokens; the head predicts pixels of the masked ones."""

    def __init__(
        self, dim: int, depth: int, num_heads: int, out_dim: int, attn_impl: AttnImpl = "sdpa"
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            Block(dim, num_heads, 4.0, True, 0.0, None, attn_impl) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, num_masked: int) -> torch.Tensor:
        """(B, N, Dd) with the masked tokens last -> (B, num_masked, out_dim)."""
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.norm(x[:, -num_masked:]))  # (B, N_mask, out_dim)


class PretrainVideoMAE(nn.Module):
    """Encoder + ``encoder_to_decoder`` + ``mask_token`` + decoder (VideoMAE's layout)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        num_frames: int = 16,
        tubelet_size: int = 2,
        mlp_ratio: float = 4.0,
        decoder_dim: int = 384,
        decoder_depth: int = 4,
        decoder_num_heads: int = 6,
        drop_path_rate: float = 0.0,
        attn_impl: AttnImpl = "sdpa",
    ) -> None:
        super().__init__()
        self.encoder = PretrainEncoder(
            img_size, patch_size, embed_dim, depth, num_heads, num_frames, tubelet_size,
            mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate, attn_impl=attn_impl,
        )  # fmt: skip
        self.patch_size, self.tubelet_size = patch_size, tubelet_size
        self.grid: tuple[int, int, int] = self.encoder.patch_embed.grid
        out_dim = 3 * tubelet_size * patch_size * patch_size  # pixels of one tubelet patch
        self.encoder_to_decoder = nn.Linear(embed_dim, decoder_dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = PretrainDecoder(
            decoder_dim, decoder_depth, decoder_num_heads, out_dim, attn_impl
        )
        n = self.encoder.patch_embed.num_patches
        self.register_buffer("pos_embed", sinusoid_table(n, decoder_dim), persistent=False)
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W), mask (B, N) -> predicted pixels of masked tokens (B, N_mask, P).

        Rows of the output follow the masked tokens in (t, h, w) order, the order of
        ``target[mask]``.
        """
        vis = self.encoder_to_decoder(self.encoder(x, mask))  # (B, N_vis, Dd)
        B, n_vis, Dd = vis.shape
        pos = self.pos_embed.to(dtype=vis.dtype).expand(B, -1, -1)  # (B, N, Dd)
        pos_vis = pos[~mask].reshape(B, n_vis, Dd)
        pos_mask = pos[mask].reshape(B, -1, Dd)  # (B, N_mask, Dd)
        tokens = torch.cat((vis + pos_vis, self.mask_token.to(vis.dtype) + pos_mask), dim=1)
        return self.decoder(tokens, pos_mask.shape[1])  # (B, N_mask, P)

    def no_weight_decay(self) -> set[str]:
        """Names excluded from weight decay besides biases/norms (VideoMAE's rule)."""
        return {"mask_token"}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the ``encoder.*`` tensors: what fine-tuning needs (a backbone to ship)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith("encoder.")}


def _init_weights(m: nn.Module) -> None:
    """VideoMAE pre-training init: xavier-uniform linears, the tubelet conv as a linear."""
    init_weights(m, linear_init=nn.init.xavier_uniform_)


def pixel_targets(
    clips: torch.Tensor,
    tubelet_size: int,
    patch_size: int,
    norm_pix: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Reconstruction targets (B, N, tubelet*p*p*3) from ImageNet-normalised clips.

    As VideoMAE: undo the ImageNet normalisation (pixels in [0, 1]), cut into tubelet
    patches in (t, h, w) token order with features ordered (p_t, p_h, p_w, channel), and
    with ``norm_pix`` standardise every patch per channel over its tubelet*p*p pixels:
    ``(x - mean) / (std_unbiased + eps)``. Per-patch normalisation makes flat regions
    cheap and edges/texture (the content that moves) carry the loss.
    """
    mean = torch.tensor(IMAGENET_MEAN, device=clips.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=clips.device).view(1, 3, 1, 1, 1)
    x = clips.float() * std + mean  # (B, 3, T, H, W) in [0, 1]
    B, C, T, H, W = x.shape
    t, h, w = T // tubelet_size, H // patch_size, W // patch_size
    x = x.reshape(B, C, t, tubelet_size, h, patch_size, w, patch_size)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # (B, t, h, w, p_t, p_h, p_w, C)
    x = x.reshape(B, t * h * w, tubelet_size * patch_size * patch_size, C)  # (B, N, P/3, C)
    if norm_pix:
        mu = x.mean(dim=-2, keepdim=True)
        sd = x.var(dim=-2, unbiased=True, keepdim=True).sqrt()
        x = (x - mu) / (sd + eps)
    return x.reshape(B, t * h * w, -1)  # (B, N, P)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked tokens only (visible ones are not scored)."""
    B, _, P = target.shape
    picked = target[mask].reshape(B, -1, P)  # (B, N_mask, P), (t, h, w) order
    return (pred.float() - picked).pow(2).mean()


def build_pretrain_model(
    name: str = "vit_base_patch16_224",
    num_frames: int = 16,
    img_size: int = 224,
    tubelet_size: int = 2,
    decoder_dim: int | None = None,
    decoder_depth: int = 4,
    decoder_num_heads: int | None = None,
    drop_path: float = 0.0,
    attn_impl: AttnImpl = "sdpa",
) -> PretrainVideoMAE:
    """A named encoder size (``vit_micro_patch16_224`` ...) with a VideoMAE decoder.

    Defaults follow VideoMAE (ViT-B: decoder 384 wide = D/2, 4 blocks, 6 heads = 64-dim
    heads): ``decoder_dim`` defaults to D/2, ``decoder_num_heads`` to ``decoder_dim // 64``
    (at least 1).
    """
    try:
        spec = model_spec(name)  # e.g. vit_giant_patch14_224: patch 14, MLP ratio 48/11
    except ValueError as exc:
        raise ValueError(f"--model: {exc}") from None
    dim, depth, heads, patch = (spec[k] for k in ("embed_dim", "depth", "num_heads", "patch_size"))
    decoder_dim = decoder_dim or dim // 2
    decoder_num_heads = decoder_num_heads or max(1, decoder_dim // 64)
    if decoder_dim % decoder_num_heads:
        raise ValueError(
            f"--decoder_dim {decoder_dim} is not divisible by --decoder_num_heads "
            f"{decoder_num_heads}"
        )
    if img_size % patch or num_frames % tubelet_size:
        raise ValueError(
            f"--input_size {img_size} must be a multiple of {patch} (the patch size) and "
            f"--num_frames {num_frames} a multiple of --tubelet_size {tubelet_size}"
        )
    return PretrainVideoMAE(
        img_size=img_size, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads,
        num_frames=num_frames, tubelet_size=tubelet_size, mlp_ratio=spec["mlp_ratio"],
        decoder_dim=decoder_dim, decoder_depth=decoder_depth,
        decoder_num_heads=decoder_num_heads, drop_path_rate=drop_path, attn_impl=attn_impl,
    )  # fmt: skip


__all__ = [
    "PretrainDecoder",
    "PretrainEncoder",
    "PretrainVideoMAE",
    "build_pretrain_model",
    "masked_mse",
    "pixel_targets",
]
