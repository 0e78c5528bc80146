"""Small parameter-free pieces of the ViT: the fixed position table, stochastic depth,
VideoMAE's weight init and the tubelet embedding as one matmul. Kept apart so ``vit.py``
reads as the transformer alone; the hand-written attention kernels are in
``attention_kernels.py``."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sinusoid table of VideoMAE: (1, N, D), computed in float64 like the reference."""
    pos = torch.arange(num_positions, dtype=torch.float64)[:, None]  # (N, 1)
    j = torch.arange(dim, dtype=torch.float64)[None, :]  # (1, D)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / dim)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float().unsqueeze(0)  # (1, N, D)


def reduced_cpu_dtype(x: torch.Tensor) -> torch.dtype | None:
    """bf16/fp16 when ``x`` is on the CPU and autocast there computes in it, else None."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return None
    dtype = torch.get_autocast_dtype("cpu")
    return dtype if dtype in (torch.bfloat16, torch.float16) else None


def tubelet_matmul(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    grid: tuple[int, int, int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """A stride = kernel Conv3d, (B, C, T, H, W) -> (B, N, D) tokens in (t, h, w) order, as
    one (N, C*t*p*p) @ (C*t*p*p, D) matmul in ``dtype``; ``weight`` is the conv's (D, C, t,
    p, p) kernel and ``grid`` the (t, h, w) token grid.

    Why: on CPUs, oneDNN's bf16 Conv3d with stride = kernel ran 3.6-5x slower than cutting
    the clip into patches and multiplying (ViT-S and ViT-B at 16x224 on the AMX Xeon;
    benchmarks/bench_patch_embed.py). ``PatchEmbed`` uses it only where the conv would run
    in bf16/fp16 anyway: fp32 keeps the conv, whose sums the reference shares.
    """
    B, C = x.shape[:2]
    (t, h, w), (ts, p) = grid, weight.shape[2:4]
    x = x[:, :, : t * ts, : h * p, : w * p].to(dtype)  # the conv ignores any remainder
    patches = x.reshape(B, C, t, ts, h, p, w, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
    patches = patches.reshape(B, t * h * w, C * ts * p * p)  # (c, t, y, x): the kernel's order
    bias = None if bias is None else bias.to(dtype)
    return F.linear(patches, weight.to(dtype).reshape(weight.shape[0], -1), bias)


class DropPath(nn.Module):
    """Stochastic depth per sample; identity when ``p == 0`` or in eval mode."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(m: nn.Module, linear_init: Callable[[torch.Tensor], object] | None = None) -> None:
    """VideoMAE's init: linears trunc-normal(0.02) (or ``linear_init``, e.g. the xavier of
    pre-training), LayerNorms to identity, the tubelet conv as a linear (xavier-uniform)."""
    if isinstance(m, nn.Linear):
        if linear_init is None:
            nn.init.trunc_normal_(m.weight, std=0.02)
        else:
            linear_init(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv3d):
        w = m.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


__all__ = [
    "DropPath",
    "init_weights",
    "reduced_cpu_dtype",
    "sinusoid_table",
    "tubelet_matmul",
]


class PatchEmbed(nn.Module):
    """Tubelet embedding: (B, 3, T, H, W) -> (B, N, D), tokens in (t, h, w) order."""

    def __init__(
        self,
        img_size: int,
        patch_size: int,
        in_chans: int,
        dim: int,
        num_frames: int,
        tubelet: int,
        fixed_grid: bool = True,
    ) -> None:
        super().__init__()
        # a fixed grid (VideoMAE: a position table per token) or any multiple of the
        # tubelet and patch (V-JEPA 2: rotary positions from the input's own grid)
        self.fixed_grid = fixed_grid
        if img_size % patch_size or num_frames % tubelet:
            raise ValueError(
                f"input_size {img_size} / num_frames {num_frames} must be multiples of the patch "
                f"size {patch_size} / tubelet size {tubelet}"
            )
        self.img_size, self.patch_size, self.tubelet_size = img_size, patch_size, tubelet
        self.grid = (num_frames // tubelet, img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        kernel = (tubelet, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=kernel, stride=kernel)

    def grid_of(self, x: torch.Tensor) -> tuple[int, int, int]:
        """The (t, h, w) token grid of an input (B, C, T, H, W)."""
        T, H, W = x.shape[-3:]
        return (T // self.tubelet_size, H // self.patch_size, W // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, H, W = x.shape[-3:]
        grid = self.grid_of(x)
        if not self.fixed_grid:
            if T % self.tubelet_size or H % self.patch_size or W % self.patch_size or 0 in grid:
                raise ValueError(
                    f"input of shape (B, C, T, H, W) = {tuple(x.shape)}: T must be a multiple "
                    f"of the tubelet size {self.tubelet_size} and H, W of the patch size "
                    f"{self.patch_size}"
                )
        elif grid != self.grid:
            raise ValueError(
                f"input of shape (B, C, T, H, W) = {tuple(x.shape)} does not match the model's "
                f"num_frames={self.grid[0] * self.tubelet_size}, input_size={self.img_size}; "
                "rebuild the model with these sizes"
            )
        dtype = reduced_cpu_dtype(x)
        if dtype is not None:  # the same sums as one matmul: oneDNN's bf16 Conv3d is slow
            return tubelet_matmul(x, self.proj.weight, self.proj.bias, grid, dtype)
        # (B, D, t, h, w) -> (B, N, D), made row-major once: as a transposed view, every
        # residual add would keep that layout and every LayerNorm copy it back (forward and
        # backward, twice per block)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()
