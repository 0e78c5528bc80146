"""AdaptFormer (arXiv 2205.13535): a parallel bottleneck beside each block's MLP.

    x' = x + attn(LN1(x))
    x_out = x' + mlp(LN2(x')) + s * up(ReLU(down(x')))

The branch reads the block's MLP input ``x'`` before ``norm2`` (the paper's parallel
design). ``up`` is zero-initialised, so an untrained adapter leaves the backbone's output
unchanged exactly and training starts from the pre-trained function. Stored as
``blocks.N.mlp_adapter.adapter_{down,up}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from aptune.models.vit import VisionTransformer
from aptune.tuning.base import MethodConfig, TuningConfigError, require


class ParallelAdapter(nn.Module):
    """``s * up(ReLU(down(x)))``: (B, N, D) -> (B, N, D), zero at init."""

    def __init__(self, dim: int, bottleneck: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.adapter_down = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.adapter_up = nn.Linear(bottleneck, dim)
        # AdaptFormer's init: kaiming-uniform down, zero up, zero biases
        nn.init.kaiming_uniform_(self.adapter_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.adapter_down.bias)
        nn.init.zeros_(self.adapter_up.weight)
        nn.init.zeros_(self.adapter_up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter_up(self.act(self.adapter_down(x))) * self.scale  # (B, N, D)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def parse_layers(spec: str | None, depth: int | None = None) -> list[int] | None:
    """``"0-3,8,10-11"`` -> [0, 1, 2, 3, 8, 10, 11]; None / "" / "all" -> None (every block)."""
    if spec is None or str(spec).strip().lower() in ("", "all"):
        return None
    layers: set[int] = set()
    try:
        for part in str(spec).split(","):
            lo, _, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if first < 0 or last < first:
                raise ValueError(part)
            layers.update(range(first, last + 1))
    except ValueError:
        raise TuningConfigError(
            f"--adapter_layers {spec!r}: expected block indices like '0-11' or '0,2,4-6'"
        ) from None
    if depth is not None and max(layers) >= depth:
        raise TuningConfigError(
            f"--adapter_layers {spec!r}: block {max(layers)} does not exist, "
            f"the model has {depth} blocks (0..{depth - 1})"
        )
    return sorted(layers)


@dataclass
class AdapterConfig(MethodConfig):
    """``--transfer_type adapter``: ``--adapter_dim``, ``--adapter_scale``, ``--adapter_layers``."""

    name: ClassVar[str] = "adapter"
    param_prefixes: ClassVar[tuple[str, ...]] = ("adapter_",)

    dim: int = 64
    scale: float = 0.1
    layers: str | None = None  # None: every block

    def __post_init__(self) -> None:
        require(
            isinstance(self.dim, int) and self.dim >= 1,
            f"--adapter_dim must be an integer >= 1, got {self.dim!r}",
        )
        require(
            math.isfinite(self.scale) and self.scale != 0.0,
            f"--adapter_scale must be a finite non-zero number, got {self.scale}",
        )
        parse_layers(self.layers)

    @classmethod
    def flag_prefix(cls) -> str:
        return "adapter_"

    def check_model(self, model: VisionTransformer) -> None:
        parse_layers(self.layers, model.depth)

    def attach(self, model: VisionTransformer) -> None:
        self.check_model(model)
        layers = parse_layers(self.layers, model.depth)
        for i, blk in enumerate(model.blocks):
            if layers is None or i in layers:
                require(blk.mlp_adapter is None, f"block {i} already has an MLP adapter")
                blk.mlp_adapter = ParallelAdapter(model.embed_dim, self.dim, self.scale)
