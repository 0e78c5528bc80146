"""``aptune train`` / ``run_class_apt.py``: the reference's flags -> a :class:`RunConfig`.

The parser is generated from the configuration's fields (name, help, command-line form)
and the tuning methods' options, so a new option is a new flag without a second
declaration. Every flag's default is suppressed: only the flags given on the command line
reach :func:`config_from_namespace`, which lays them over the ``--config`` file, which lies
over the ``--recipe`` preset, which lies over the reference's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import os

from aptune.config import REFERENCE_METHOD_DEFAULTS, SECTIONS, RunConfig
from aptune.tuning.options import method_flags

SECTION_TITLES = {
    "model": "model and tuning method",
    "data": "data",
    "optim": "optimisation (lr values are per 256 samples)",
    "job": "run, checkpoints, distributed",
}


def _default_text(value: object) -> str:
    return f" (default: {value})" if value not in (None, "", False) else ""


def _add_field(group: argparse._ArgumentGroup, f: dataclasses.Field) -> None:
    meta = dict(f.metadata)
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    names = [f"--{f.name}", *meta.get("aliases", ())]
    help_text = meta["help"].replace("%", "%%") + _default_text(default)
    if f.type in ("bool", bool):
        group.add_argument(*names, dest=f.name, action="store_true", help=help_text)
        if meta.get("negatable"):
            group.add_argument(f"--no_{f.name}", dest=f.name, action="store_false",
                               help=f"disable --{f.name}")  # fmt: skip
        return
    kwargs: dict = {"dest": f.name, "help": help_text,
                    "type": meta.get("type", type(default))}  # fmt: skip
    for key in ("choices", "nargs"):
        if key in meta:
            kwargs[key] = meta[key]
    group.add_argument(*names, **kwargs)


def add_method_flags(
    parser: argparse.ArgumentParser, title: str = "method options", reference: bool = True
) -> None:
    """``--<prefix><field>`` for every tuning method option (unset: the method's default).

    The help shows the value an unset flag ends up with: the reference's where ``aptune
    train`` applies it (``reference``), else the method's own (``aptune profile``).
    """
    group = parser.add_argument_group(f"{title} (unset: the method's default)")
    shown = REFERENCE_METHOD_DEFAULTS if reference else {}
    for flag in method_flags().values():
        default = shown.get(flag.name, flag.default)
        help_text = f"for --transfer_type {'/'.join(flag.methods)}{_default_text(default)}"
        if flag.type is bool:
            group.add_argument(f"--{flag.name}", action=argparse.BooleanOptionalAction,
                               help=help_text)  # fmt: skip
        else:
            group.add_argument(f"--{flag.name}", type=flag.type, help=help_text)


def build_train_parser(prog: str = "aptune train") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Fine-tune a VideoMAE ViT with APT (or another method) for action "
        "recognition. Flags are the reference run_class_apt.py's, with its defaults.",
        argument_default=argparse.SUPPRESS,
    )
    p.add_argument("--config", help="YAML file of option values (config.yaml of a run "
                   "repeats it); flags override it")  # fmt: skip
    for section, cls in SECTIONS.items():
        group = p.add_argument_group(SECTION_TITLES[section])
        for f in dataclasses.fields(cls):
            _add_field(group, f)
        if section == "model":
            add_method_flags(p)
    return p


def config_from_namespace(ns: argparse.Namespace) -> RunConfig:
    """The only reader of a Namespace: the given flags over ``--config`` over ``--recipe``
    over the reference's defaults, validated."""
    given = {k: v for k, v in vars(ns).items() if k not in ("config", "func")}
    path = getattr(ns, "config", None)
    # the file is read as a run folder's config.yaml is read back (load_run): from_yaml
    cfg = RunConfig.from_yaml(path, given) if path else RunConfig.from_values(given, "flags")
    if cfg.job.local_rank >= 0:  # torch.distributed.launch's --local-rank: the env rule
        os.environ.setdefault("LOCAL_RANK", str(cfg.job.local_rank))
    return cfg


def parse_train_args(argv: list[str] | None, prog: str = "aptune train") -> RunConfig:
    """``aptune train`` flags -> a validated :class:`RunConfig`."""
    return config_from_namespace(build_train_parser(prog).parse_args(argv))


def cmd_train(argv: list[str], prog: str = "aptune train") -> int:
    from aptune.engine import evaluate_config, train

    cfg = parse_train_args(argv, prog)
    if cfg.job.eval:  # the reference's --eval: test the model of --finetune / --resume
        import json

        result = evaluate_config(cfg)
        if result:
            print(json.dumps(result["test"], indent=2))
        return 0
    train(cfg)
    return 0
