"""Tube masking of VideoMAE: one spatial mask per clip, repeated over every time slice.

Why tubes: neighbouring frames are nearly identical, so a per-token random mask lets the
model copy a masked patch from the frame before; masking the same spatial positions in
every temporal slice hides the whole "tube" and forces it to reason about motion
(VideoMAE, arXiv 2203.12602, Sec. 3.3).

The masks are a pure function of a ``torch.Generator``: the pre-training loop seeds one
per (seed, epoch, rank), so a resumed run draws exactly the masks it would have drawn.
"""

from __future__ import annotations

import torch


def num_masked_per_slice(grid: tuple[int, int, int], mask_ratio: float) -> int:
    """Masked spatial positions per time slice: ``int(mask_ratio * h * w)`` (VideoMAE's rule)."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"--mask_ratio must be in [0, 1), got {mask_ratio}")
    _, h, w = grid
    masked = int(mask_ratio * h * w)
    if masked >= h * w:  # unreachable for ratio < 1, kept as a guard for odd float input
        raise ValueError(f"--mask_ratio {mask_ratio} leaves no visible token per slice")
    return masked


def tube_mask(
    grid: tuple[int, int, int],
    mask_ratio: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask (B, N) with N = t*h*w in (t, h, w) token order; True = masked.

    Every clip masks exactly ``t * num_masked_per_slice`` tokens, and the same (h, w)
    positions in every time slice.
    """
    t, h, w = grid
    masked = num_masked_per_slice(grid, mask_ratio)
    scores = torch.rand(batch_size, h * w, generator=generator)  # (B, h*w)
    order = scores.argsort(dim=1)  # a uniform random permutation per clip
    spatial = torch.zeros(batch_size, h * w, dtype=torch.bool)
    spatial.scatter_(1, order[:, :masked], True)  # (B, h*w): first `masked` of it hidden
    return spatial[:, None, :].expand(batch_size, t, h * w).reshape(batch_size, t * h * w)


def random_mask(
    grid: tuple[int, int, int],
    mask_ratio: float,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Boolean mask (B, N) hiding exactly ``int(mask_ratio * N)`` tokens chosen anywhere.

    VideoMAE's ``--mask_type random`` (its ablation): a hidden patch may be visible in
    another time slice, which rewards finding the same content across frames.
    """
    n = grid[0] * grid[1] * grid[2]
    masked = num_masked_per_slice((1, 1, n), mask_ratio)  # one slice of all n tokens
    order = torch.rand(batch_size, n, generator=generator).argsort(dim=1)  # (B, N)
    mask = torch.zeros(batch_size, n, dtype=torch.bool)
    return mask.scatter_(1, order[:, :masked], True)


MASKS = {"tube": tube_mask, "random": random_mask}

__all__ = ["MASKS", "num_masked_per_slice", "random_mask", "tube_mask"]
