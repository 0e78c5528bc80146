"""Tuning methods: registry, trainable-set selection and the parameter report.

``--transfer_type`` names one method or several joined by ``+`` (``prompt+lora``); each
method attaches its parameters and declares which parameter names train.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from aptune.models.convert import is_method_key
from aptune.models.vit import VisionTransformer
from aptune.tuning.adapter import AdapterConfig
from aptune.tuning.apt import AptConfig, AttentionPrompts, apply_apt
from aptune.tuning.base import (
    HEAD_PREFIXES,
    MethodConfig,
    TuningConfigError,
    is_bias_or_norm,
)
from aptune.tuning.bitfit import BitFitConfig
from aptune.tuning.full import End2EndConfig, LinearConfig, RandomInitConfig
from aptune.tuning.lora import LoraConfig
from aptune.tuning.parameter_report import ParameterReport, parameter_report
from aptune.tuning.vpt import VptConfig, VptDeepConfig

METHODS: dict[str, type[MethodConfig]] = {
    cfg.name: cfg
    for cfg in (
        AptConfig,
        LinearConfig,
        End2EndConfig,
        RandomInitConfig,
        VptConfig,
        VptDeepConfig,
        AdapterConfig,
        LoraConfig,
        BitFitConfig,
    )
}
#: other spellings users write for the same method
ALIASES = {
    "apt": "prompt",
    "full": "end2end",
    "finetune": "end2end",
    "linear_probe": "linear",
    "vpt": "vpt_shallow",
    "adaptformer": "adapter",
    "bias": "bitfit",
}


def register(cfg: type[MethodConfig], *aliases: str) -> type[MethodConfig]:
    """Add a method to the registry (used by the method modules)."""
    METHODS[cfg.name] = cfg
    for alias in aliases:
        ALIASES[alias] = cfg.name
    return cfg


def parse_transfer_type(transfer_type: str, options: dict[str, Any]) -> list[MethodConfig]:
    """``"prompt+lora"`` + flags -> validated method configs, or a one-line error."""
    names = [ALIASES.get(n.strip(), n.strip()) for n in transfer_type.split("+") if n.strip()]
    if not names:
        raise TuningConfigError("--transfer_type is empty; choose one of " + ", ".join(METHODS))
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise TuningConfigError(
            f"--transfer_type {transfer_type!r}: unknown method {unknown[0]!r}; "
            f"choose from {', '.join(METHODS)} (combine with '+', e.g. prompt+lora)"
        )
    if len(set(names)) != len(names):
        raise TuningConfigError(f"--transfer_type {transfer_type!r} names a method twice")
    configs = [METHODS[n].from_options(options) for n in names]
    if len(configs) > 1:
        full = [c.name for c in configs if c.trains_backbone or c.name == "linear"]
        if full:
            raise TuningConfigError(
                f"--transfer_type {transfer_type!r}: {full[0]!r} cannot be combined with other "
                "methods (it already decides what trains); use it alone"
            )
        kinds = [c.name for c in configs if c.name in ("vpt_shallow", "vpt_deep")]
        if len(kinds) > 1:
            raise TuningConfigError("choose one of vpt_shallow and vpt_deep, not both")
    return configs


def attach_methods(model: VisionTransformer, configs: list[MethodConfig]) -> None:
    """Add each method's tensors to ``model``, which records the configs it carries."""
    for cfg in configs:
        cfg.attach(model)
    model.tuning_configs = list(configs)


def is_trainable_name(model: nn.Module, name: str, configs: list[MethodConfig]) -> bool:
    """The one rule deciding what trains: head + each method's own parameters."""
    if any(c.trains_backbone for c in configs):
        return True
    if name.startswith(HEAD_PREFIXES):
        return True
    if any(c.trains_biases for c in configs) and is_bias_or_norm(model, name):
        return True
    return any(is_method_key(name, c.param_prefixes) for c in configs)


def mark_trainable(model: nn.Module, configs: list[MethodConfig]) -> None:
    """Set ``requires_grad`` on every parameter from :func:`is_trainable_name`."""
    for name, param in model.named_parameters():
        param.requires_grad_(is_trainable_name(model, name, configs))


def method_prefixes(configs: list[MethodConfig]) -> tuple[str, ...]:
    return tuple(p for c in configs for p in c.param_prefixes)


def registered_prefixes() -> tuple[str, ...]:
    """Every registered method's parameter prefixes, each once, in registry order.

    What checkpoint loading is told (``models`` may not import this package) to tell a
    method's tensors from the backbone's: asked at call time, so a method added with
    :func:`register` is recognised without a change in ``models``.
    """
    return tuple(dict.fromkeys(p for cfg in METHODS.values() for p in cfg.param_prefixes))


__all__ = [
    "ALIASES",
    "METHODS",
    "AptConfig",
    "AttentionPrompts",
    "End2EndConfig",
    "LinearConfig",
    "MethodConfig",
    "ParameterReport",
    "RandomInitConfig",
    "TuningConfigError",
    "apply_apt",
    "attach_methods",
    "is_trainable_name",
    "mark_trainable",
    "method_prefixes",
    "parameter_report",
    "parse_transfer_type",
    "register",
    "registered_prefixes",
]
