"""The methods' options as flat flags: ``--<prefix><field>`` for every config field.

Each method's config dataclass is the one declaration of its options; the run
configuration, the command line and ``aptune profile`` ask this module for the flag names,
their types and which methods read them, so a new field is a new flag everywhere.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MethodFlag:
    """One method option: ``name`` is the flag (``lora_rank``), ``default`` the method's."""

    name: str
    type: type
    default: Any
    methods: tuple[str, ...]


def _field_type(field: dataclasses.Field) -> type:
    """The Python type of a config field (``int | None`` -> int; untyped None -> str)."""
    if field.default is not None and field.default is not dataclasses.MISSING:
        return type(field.default)
    text = str(field.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float)):
        if name in text:
            return kind
    return str


def method_flags() -> dict[str, MethodFlag]:
    """Every method option by flag name, in registry order."""
    from aptune.tuning import METHODS

    users: dict[str, list[str]] = {}
    for cfg in METHODS.values():
        users.setdefault(cfg.flag_prefix(), []).append(cfg.name)
    out: dict[str, MethodFlag] = {}
    for cfg in METHODS.values():
        prefix = cfg.flag_prefix()
        if not prefix:
            continue
        for f in dataclasses.fields(cfg):
            name = prefix + f.name
            if name not in out:
                out[name] = MethodFlag(name, _field_type(f), f.default, tuple(users[prefix]))
    return out


def coerce_option(flag: MethodFlag, value: Any, where: str) -> Any:
    """``value`` as the option's type (YAML gives ints for floats, strings stay strings)."""
    from aptune.tuning.base import TuningConfigError

    if value is None:
        return None
    if flag.type is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, flag.type) or (flag.type is int and isinstance(value, bool)):
        raise TuningConfigError(
            f"{where}: {flag.name} must be {flag.type.__name__}, got {value!r}"
        )
    return value
