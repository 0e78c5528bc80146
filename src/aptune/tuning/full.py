"""The baselines of the paper's comparison that add no parameters.

``linear`` trains the pooled norm and head; ``end2end`` trains everything from the
checkpoint; ``random`` trains everything from random initialisation (no checkpoint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aptune.tuning.base import MethodConfig


@dataclass
class LinearConfig(MethodConfig):
    """Linear probing: frozen backbone, trainable ``fc_norm`` + ``head``."""

    name: ClassVar[str] = "linear"


@dataclass
class End2EndConfig(MethodConfig):
    """Full fine-tuning from the pre-trained checkpoint."""

    name: ClassVar[str] = "end2end"
    trains_backbone: ClassVar[bool] = True


@dataclass
class RandomInitConfig(MethodConfig):
    """Full training from random initialisation: the checkpoint is not loaded."""

    name: ClassVar[str] = "random"
    trains_backbone: ClassVar[bool] = True
