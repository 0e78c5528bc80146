"""BitFit (Ben Zaken et al., arXiv 2106.10199): train only the backbone's biases.

Trainable: every bias of the backbone (patch embedding, VideoMAE's separate ``q_bias`` and
``v_bias`` - the k bias is fixed at zero and does not exist -, attention ``proj``, MLP
``fc1``/``fc2``), the LayerNorm affine parameters (``norm1``/``norm2``; ViT variants of
BitFit tune them too since they are bias-like), plus ``fc_norm`` and ``head``. Adds no
parameters, so checkpoints hold a subset of the backbone's own tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aptune.tuning.base import MethodConfig


@dataclass
class BitFitConfig(MethodConfig):
    """``--transfer_type bitfit``: biases and norms train, no flags."""

    name: ClassVar[str] = "bitfit"
    trains_biases: ClassVar[bool] = True
