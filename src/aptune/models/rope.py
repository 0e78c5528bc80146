"""V-JEPA 2's and 2.1's 3D rotary position embedding: tables per token grid and their
application.

Each head's dimension ``d`` is split into ``[time | height | width | rest]``: each axis gets
``c = 2 * floor(floor(d / 3) / 2)`` dimensions, the rest stays unrotated. Token ``n`` of a
(t, h, w) raster grid has the positions ``(n // (H*W), (n % (H*W)) // W, n % W)`` in
tubelet / patch units of the input's own grid. Within an axis chunk the frequencies are
``f_j = 10000 ** (-j / (c/2))`` for ``j < c/2`` and element ``i`` turns by
``pos * f[i % (c/2)]``: the angle vector is tiled, not interleaved, as in Meta's released
encoders (their weights were trained so). Elements pair as (2m, 2m+1):
``rot[2m] = -x[2m+1]``, ``rot[2m+1] = x[2m]``, ``out = x * cos + rot * sin``.

V-JEPA 2.1 differs in two ways (``interleaved=True, spatial_scale_to=16``): the angle vector
is interleaved, element ``i`` turning by ``pos * f[i // 2]`` (each pair (2m, 2m+1) shares
``f_m``), and the height and width positions are interpolated onto its 16 x 16 pre-training
grid, ``h * (16 - 1) / (H - 1)`` and ``w * (16 - 1) / (W - 1)`` (fractional for other grids;
the time position stays the tubelet index).

Angles are computed in fp32 and the rotation runs in fp32 whatever the autocast dtype:
positions up to 64 and frequencies down to 1e-4 lose their low bits in bf16.
"""

from __future__ import annotations

import torch

RopeTables = tuple[torch.Tensor, torch.Tensor]  # (cos, sin), each (N, head_dim), fp32


def axis_dims(head_dim: int) -> int:
    """Rotated dimensions per axis: 20 for head dim 64, 26 for 80."""
    return 2 * ((head_dim // 3) // 2)


def _axis_angles(pos: torch.Tensor, dims: int, interleaved: bool = False) -> torch.Tensor:
    """(N,) positions -> (N, dims) angles: the frequency vector tiled twice (V-JEPA 2) or
    each frequency repeated for its pair (``interleaved``, V-JEPA 2.1)."""
    half = dims // 2
    freqs = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = pos.to(torch.float64)[:, None] * freqs[None, :]  # (N, half)
    if interleaved:
        return angles.repeat_interleave(2, dim=1).to(torch.float32)  # element i: f[i // 2]
    return angles.repeat(1, 2).to(torch.float32)  # element i uses f[i % half]


def grid_positions(grid: tuple[int, int, int], device: torch.device | None = None):
    """(t, h, w) positions, each (N,), of the tokens of a raster (t, h, w) grid."""
    T, H, W = grid
    n = torch.arange(T * H * W, device=device)
    return n // (H * W), (n % (H * W)) // W, n % W


def scaled_positions(
    grid: tuple[int, int, int], scale_to: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, h, w) positions in fp64 with h and w interpolated onto a ``scale_to`` grid:
    ``h * (scale_to - 1) / (H - 1)``, likewise w; t unchanged (V-JEPA 2.1).

    A height or width of 1 token keeps its positions as they are (all 0): the factor would
    divide by zero.
    """
    _, H, W = grid
    t, h, w = (p.to(torch.float64) for p in grid_positions(grid, device))
    if H > 1:
        h = h * ((scale_to - 1) / (H - 1))
    if W > 1:
        w = w * ((scale_to - 1) / (W - 1))
    return t, h, w


def rope_tables(
    grid: tuple[int, int, int],
    head_dim: int,
    device: torch.device | None = None,
    interleaved: bool = False,
    spatial_scale_to: int | None = None,
) -> RopeTables:
    """(cos, sin) of shape (N, head_dim) in fp32 for every token of ``grid``.

    The defaults are V-JEPA 2's tables (tiled, positions of the grid itself); V-JEPA 2.1
    passes ``interleaved=True, spatial_scale_to=16`` (see the module docstring; a grid
    height or width of 1 is left unscaled). The unrotated rest has angle 0 (cos 1, sin 0),
    so one product covers the whole head.
    """
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head dimension; got {head_dim}")
    dims = axis_dims(head_dim)
    if spatial_scale_to is None:
        positions = grid_positions(grid, device)
    else:
        positions = scaled_positions(grid, spatial_scale_to, device)
    parts = [_axis_angles(p, dims, interleaved) for p in positions]
    n = parts[0].shape[0]
    rest = torch.zeros(n, head_dim - 3 * dims, dtype=torch.float32, device=device)
    angles = torch.cat([*parts, rest], dim=1)  # (N, head_dim)
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(..., d) -> (..., d) with ``out[2m] = -x[2m+1]``, ``out[2m+1] = x[2m]``."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the last ``N = cos.shape[0]`` tokens of ``x`` (B, h, L, d); tokens before them
    (VPT's inserted prompts) carry no position and stay as they are."""
    n = cos.shape[0]
    data = x[..., -n:, :] if x.shape[-2] != n else x
    rotated = data.float() * cos + rotate_pairs(data.float()) * sin
    rotated = rotated.to(x.dtype)
    if data is x:
        return rotated
    return torch.cat([x[..., :-n, :], rotated], dim=-2)


__all__ = [
    "RopeTables",
    "apply_rope",
    "axis_dims",
    "grid_positions",
    "rope_tables",
    "rotate_pairs",
    "scaled_positions",
]
