"""An adapter folder (or a Hub repository holding one) read back as a run.

``adapter_source`` tells an adapter from a run folder: a local folder with
``adapter_config.json``, or a Hub id (``ORG/NAME``, ``ORG/NAME@REV``, ``hf://ORG/NAME``;
a local path of that name wins) whose files come through the standard Hub cache, offline
once cached. ``read_adapter`` turns the folder into the run's ``RunConfig`` with its base
found and checked (``base_source.find_base``) and the weights file to load on top.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from aptune.config import ConfigError, RunConfig
from aptune.models.checkpoint_files import CheckpointError, first_line
from aptune.models.hub import hub_cache_dir, hub_offline, parse_hub_id
from aptune.sharing.adapter_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from aptune.sharing.base_source import find_base
from aptune.sharing.errors import SharingError
from aptune.tuning import ALIASES, METHODS

#: the files of an adapter repository that loading needs (README.md is for people)
ADAPTER_FILES = [ADAPTER_CONFIG, ADAPTER_WEIGHTS, "classes.txt"]


@dataclass
class AdapterSpec:
    """What ``engine`` needs to rebuild an adapter's model."""

    folder: Path
    config: RunConfig
    weights: Path
    class_names: list[str]
    checkpoint: str


def _normalised(source: str | os.PathLike) -> str:
    """``Path("hf://ORG/NAME")`` prints ``hf:/ORG/NAME``: give the id its two slashes back."""
    text = str(source)
    if text.startswith("hf:/") and not text.startswith("hf://"):
        text = "hf://" + text[len("hf:/") :]
    return text


def fetch_adapter(source: str) -> Path:
    """The cached snapshot folder of an adapter repository, downloading unless offline."""
    from huggingface_hub import snapshot_download

    repo, revision = parse_hub_id(source)  # type: ignore[misc]
    try:
        folder = snapshot_download(
            repo,
            revision=revision,
            cache_dir=hub_cache_dir(),
            allow_patterns=ADAPTER_FILES,
            local_files_only=hub_offline(),
            token=os.environ.get("HF_TOKEN") or None,
        )
    except Exception as e:  # noqa: BLE001 - every Hub failure is the same user problem
        kind = type(e).__name__
        at = f"@{revision}" if revision else ""
        how = (
            "it is not in the cache and HF_HUB_OFFLINE is set; unset it once to download"
            if hub_offline()
            else "check the id and your network (private? set HF_TOKEN)"
        )
        raise SharingError(
            f"{source}: no local folder of that name, and the Hub adapter {repo}{at} could "
            f"not be read ({kind}: {first_line(e)[:160]}); {how}"
        ) from None
    return Path(folder)


def adapter_source(run: str | os.PathLike) -> Path | None:
    """The local adapter folder ``run`` names (a Hub id is fetched), or None for a run folder."""
    text = _normalised(run)
    path = Path(text).expanduser()
    if path.is_dir():
        return path if (path / ADAPTER_CONFIG).is_file() else None
    if parse_hub_id(text) is None:
        return None
    folder = fetch_adapter(text)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise SharingError(
            f"{text}: the Hub repository has no {ADAPTER_CONFIG}; it is not an aptune adapter "
            "(a base model goes to --finetune, not --run)"
        )
    return folder


def _read_config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SharingError(f"{path}: not a readable adapter config ({first_line(e)})") from None
    if not isinstance(cfg, dict):
        raise SharingError(f"{path}: not a JSON object")
    if cfg.get("library_name") != "aptune" or "run_config" not in cfg:
        raise SharingError(
            f"{path}: not written by aptune (a PEFT adapter? load it with peft); aptune reads "
            "folders of `aptune export RUN --format adapter`"
        )
    return cfg


def _check_methods(cfg: dict, path: Path) -> None:
    """Every method the adapter names must be one this aptune has."""
    names = [str(m.get("name")) if isinstance(m, dict) else str(m) for m in cfg.get("methods", [])]
    names += [n.strip() for n in str(cfg["run_config"].get("transfer_type", "")).split("+")]
    unknown = [n for n in names if n and ALIASES.get(n, n) not in METHODS]
    if unknown:
        raise SharingError(
            f"{path}: unknown method {unknown[0]!r} (this aptune knows {', '.join(METHODS)}); "
            "upgrade aptune, or export the run again"
        )


def read_adapter_checkpoint(folder: Path) -> str:
    """Which checkpoint of its run the adapter holds (``best`` or ``last``)."""
    return str(_read_config(Path(folder)).get("checkpoint", "best"))


def read_adapter(folder: Path) -> AdapterSpec:
    """The adapter's run config (its base found and verified) and weights file."""
    folder = Path(folder)
    path = folder / ADAPTER_CONFIG
    cfg = _read_config(folder)
    _check_methods(cfg, path)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise SharingError(f"{folder}: no {ADAPTER_WEIGHTS}; copy the whole adapter folder")
    if cfg.get("trainable_only") and not cfg.get("base_model_name_or_path"):
        raise SharingError(f"{path}: trainable tensors only, but no base model is named")
    try:
        base = find_base(cfg, str(folder))
        run_cfg = RunConfig.from_values({**cfg["run_config"], "finetune": base}, str(path))
    except CheckpointError as e:
        raise SharingError(str(e)) from None
    except ConfigError as e:
        raise SharingError(f"{e} (written by aptune {cfg.get('aptune_version', '?')})") from None
    names = [str(n) for n in cfg.get("classes") or []]
    return AdapterSpec(folder, run_cfg, weights, names, str(cfg.get("checkpoint", "best")))


__all__ = [
    "ADAPTER_FILES",
    "AdapterSpec",
    "adapter_source",
    "fetch_adapter",
    "read_adapter",
    "read_adapter_checkpoint",
]
