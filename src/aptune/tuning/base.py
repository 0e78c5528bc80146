"""What every tuning method is: a validated config, parameters it attaches, names it trains.

A method never forks the model classes; it fills the hooks of ``aptune.models.vit``
(``kv_prompts``, ``seq_prompts``, ``Attention.qkv_delta``, ``Block.mlp_adapter``) and names
its parameters with a unique prefix, so selecting what trains and filtering a
checkpoint are both one name test.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import nn

from aptune.models.vit import VisionTransformer

#: Parameters of the head on the encoder's tokens, trained by every method: the pooled
#: norm and classifier, and V-JEPA 2's attentive pooler.
HEAD_PREFIXES = ("fc_norm.", "head.", "pooler.")


class TuningConfigError(ValueError):
    """A tuning option has a value the method cannot use; the message names the flag."""


@dataclass
class MethodConfig:
    """Base of every method's config. Subclasses validate in ``__post_init__``."""

    name: ClassVar[str] = ""
    #: leaf-name prefixes of the parameters this method adds (e.g. ``("prompt_",)``)
    param_prefixes: ClassVar[tuple[str, ...]] = ()
    #: does this method train every backbone weight?
    trains_backbone: ClassVar[bool] = False
    #: does this method train biases / norms of the backbone (BitFit)?
    trains_biases: ClassVar[bool] = False

    def attach(self, model: VisionTransformer) -> None:
        """Add the method's parameters to ``model`` (default: none)."""

    def check_model(self, model: VisionTransformer) -> None:
        """Reject values that do not fit this model (e.g. a layer index past its depth)."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> MethodConfig:
        """Build from a flat dict of flags, taking only the fields this config has."""
        names = {f.name for f in dataclasses.fields(cls)}
        flag_prefix = cls.flag_prefix()
        kwargs = {}
        for key, value in options.items():
            field = key[len(flag_prefix) :] if flag_prefix and key.startswith(flag_prefix) else None
            if field in names and value is not None:
                kwargs[field] = value
        return cls(**kwargs)

    @classmethod
    def flag_prefix(cls) -> str:
        """Flags of this method are ``--<prefix><field>`` (``--prompt_num_tokens``)."""
        return ""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise TuningConfigError(message)


def is_bias_or_norm(model: nn.Module, name: str) -> bool:
    """Biases (incl. VideoMAE's q/v biases) and LayerNorm affine parameters."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("bias", "q_bias", "v_bias"):
        return True
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(owner, nn.LayerNorm)
