"""The base weights an adapter needs: recorded at export, found and checked at load.

An adapter holds only what its run trained, so it names the backbone it was trained on the
way the run got it: a Hub id pinned to the commit that was read (``ORG/NAME`` + revision),
or a local path with the sha256 of every file read from it. Loading asks for exactly those
weights; a missing base or a different file is one line naming the adapter and the base.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from aptune.models.checkpoint_files import HF_WEIGHT_FILES, CheckpointError, read_json
from aptune.models.checkpoint_io import resolve_checkpoint_path
from aptune.models.hub import parse_hub_id, resolve_hub_checkpoint


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weight_files(source: Path) -> list[Path]:
    """The files aptune reads for a local checkpoint: the file itself, or the weights of a
    Hugging Face folder (safetensors first, every shard of an index)."""
    found, kind = resolve_checkpoint_path(source)
    if kind != "hf":
        return [found]
    for name in HF_WEIGHT_FILES:
        f = found / name
        if f.is_file():
            if name.endswith(".index.json"):
                shards = sorted(set(read_json(f).get("weight_map", {}).values()))
                return [f] + [found / s for s in shards]
            return [f]
    return []


def describe_base(finetune: str) -> dict:
    """adapter_config.json's base fields for a run's ``--finetune``.

    ``base_model_name_or_path`` is the Hub repository or the absolute local path (None: the
    run had no base, its adapter holds every tensor); ``revision`` the Hub commit read;
    ``base_model_sha256`` maps each local file read (relative to the path) to its sha256.
    """
    if not finetune:
        return {"base_model_name_or_path": None, "revision": None, "base_model_sha256": None}
    hub = parse_hub_id(finetune)
    if hub is not None:
        snapshot = resolve_hub_checkpoint(finetune)  # snapshots/<commit>/
        return {"base_model_name_or_path": hub[0], "revision": snapshot.name,
                "base_model_sha256": None}  # fmt: skip
    path = Path(finetune).expanduser().resolve()
    files = weight_files(path)
    root = path if path.is_dir() else path.parent
    sums = {str(f.relative_to(root)): sha256_of(f) for f in files}
    return {"base_model_name_or_path": str(path), "revision": None, "base_model_sha256": sums}


def find_base(record: dict, where: str) -> str:
    """The ``--finetune`` that rebuilds the adapter's model from ``record`` (its config);
    ``""`` for an adapter without a base. ``where`` names the adapter in errors."""
    name = record.get("base_model_name_or_path")
    if not name:
        return ""
    revision = record.get("revision")
    sums = record.get("base_model_sha256")
    if sums is None:  # a Hub id: the pinned commit, from the cache or the Hub
        source = f"{name}@{revision}" if revision else str(name)
        try:
            return str(resolve_hub_checkpoint(f"hf://{source}"))  # forced: never a local path
        except CheckpointError as e:
            raise CheckpointError(f"{where}: its base model {source} is missing: {e}") from None
    path = Path(name)
    if not path.exists():
        raise CheckpointError(
            f"{where}: its base model {path} is missing (adapter_config.json names it with "
            "sha256s); put the original weights there, or edit base_model_name_or_path"
        )
    root = path if path.is_dir() else path.parent
    for rel, expected in sums.items():
        f = root / rel
        got = sha256_of(f) if f.is_file() else "missing"
        if got != expected:
            raise CheckpointError(
                f"{where}: its base model {f} has sha256 {got[:16]}..., the adapter was "
                f"trained on {expected[:16]}... (adapter_config.json); give the original "
                "base weights"
            )
    return str(path)


__all__ = ["describe_base", "find_base", "sha256_of", "weight_files"]
