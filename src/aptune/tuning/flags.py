"""Command-line flags of the tuning methods, generated from their config dataclasses.

Every registered method's field ``f`` becomes ``--<prefix>f`` (``--lora_rank``), default
unset so the method's own default applies. Generating them keeps ``aptune train`` and
``aptune profile`` in step with the methods: a new field is a new flag in both.
"""

from __future__ import annotations

import argparse
import dataclasses

from aptune.tuning import METHODS


def add_method_flags(parser: argparse.ArgumentParser, title: str = "method options") -> None:
    """Add a flag per method field, skipping flags the parser already defines."""
    existing = {a.dest for a in parser._actions}
    group = parser.add_argument_group(f"{title} (unset: the method's default)")
    users: dict[str, list[str]] = {}  # flag prefix -> methods reading it (vpt_shallow, vpt_deep)
    for cfg in METHODS.values():
        users.setdefault(cfg.flag_prefix(), []).append(cfg.name)
    for cfg in METHODS.values():
        prefix = cfg.flag_prefix()
        if not prefix:
            continue
        for f in dataclasses.fields(cfg):
            flag = prefix + f.name
            if flag in existing:
                continue
            existing.add(flag)
            kind = type(f.default) if f.default is not None else str
            if "int" in str(f.type) and f.default is None:
                kind = int
            default = "its default" if f.default is None else repr(f.default)
            # "%(default).0s" prints nothing and stops the formatter's "(default: None)"
            names = "/".join(users[prefix])
            help_text = f"for --transfer_type {names}; unset: {default}%(default).0s"
            if kind is bool:
                group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction,
                                   help=help_text)  # fmt: skip
            else:
                group.add_argument(f"--{flag}", type=kind, help=help_text)
