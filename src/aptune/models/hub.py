"""Hugging Face Hub ids as checkpoints: ``ORG/NAME``, ``ORG/NAME@REVISION``, ``hf://ORG/NAME``.

An id resolves to a snapshot folder of the standard Hub cache (``config.json`` plus the
weights, safetensors preferred), which then loads like any local Hugging Face folder.
A string that exists on disk is always a local path, never an id. ``HF_HUB_OFFLINE``,
``HF_HUB_CACHE`` / ``HF_HOME`` and ``HF_TOKEN`` are read when an id is resolved (not when
``huggingface_hub`` was imported), so offline means no network call at all.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from aptune.models.checkpoint_files import HF_WEIGHT_FILES, CheckpointError, read_json

_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?")
#: Endings that mark a (missing) local file rather than a repository name.
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".json", ".tar", ".zip")


def parse_hub_id(source: str | Path) -> tuple[str, str | None] | None:
    """(repo_id, revision) when ``source`` names a Hub repository, else None.

    A path that exists wins; ``hf://`` forces the id reading (and must parse).
    """
    text = str(source)
    forced = text.startswith("hf://")
    if not forced and (Path(text).expanduser().exists() or text.startswith(("/", ".", "~"))):
        return None
    m = _ID.fullmatch(text.removeprefix("hf://"))
    if m is None or (not forced and m.group("repo").lower().endswith(_FILE_SUFFIXES)):
        if forced:
            raise CheckpointError(
                f"{text}: not a Hub id; write hf://ORG/NAME or hf://ORG/NAME@REVISION"
            )
        return None
    return m.group("repo"), m.group("rev")


def is_hub_id(source: str | Path) -> bool:
    return parse_hub_id(source) is not None


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub reads it (1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_cache_dir() -> Path:
    """The cache huggingface_hub uses: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def _not_cached(source: str, repo: str, revision: str | None) -> CheckpointError:
    at = f" at revision {revision}" if revision else ""
    cli = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    how = (
        "unset HF_HUB_OFFLINE to download it"
        if hub_offline()
        else "connect to the Hub once (it could not be reached)"
    )
    return CheckpointError(
        f"{source}: no local file or folder of that name, and the Hub model {repo}{at} is not "
        f"in the cache {hub_cache_dir()}; {how}, or run `{cli}` (older huggingface_hub: "
        "`huggingface-cli download`), or pass a local path"
    )


def _fetch(repo: str, filename: str, revision: str | None, source: str) -> Path | None:
    """One file of the snapshot -> its cached path; None if the repository lacks it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (  # here in 0.20 (pyproject's floor) and today
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        return Path(
            hf_hub_download(
                repo,
                filename,
                revision=revision,
                cache_dir=hub_cache_dir(),
                local_files_only=offline,
                token=os.environ.get("HF_TOKEN") or None,
            )
        )
    except GatedRepoError:
        raise CheckpointError(
            f"{source}: {repo} is gated; accept its terms on huggingface.co and set HF_TOKEN"
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(
            f"{source}: no local file or folder of that name, and no Hub model {repo} "
            "(private? set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{source}: {repo} has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        if filename == "config.json":
            raise _not_cached(source, repo, revision) from None
        return None  # not cached: try the next weight file
    except EntryNotFoundError:
        return None
    except OSError as e:  # disk full, permissions ...
        raise CheckpointError(f"{source}: reading {repo}/{filename} failed ({e})") from None


def resolve_hub_checkpoint(source: str | Path) -> Path:
    """The local snapshot folder of a Hub id, downloading what is missing unless offline."""
    parsed = parse_hub_id(source)
    if parsed is None:
        raise CheckpointError(f"{source}: not a Hugging Face Hub id (ORG/NAME[@REVISION])")
    repo, revision = parsed
    text = str(source)
    folder = _fetch(repo, "config.json", revision, text).parent  # type: ignore[union-attr]
    for name in HF_WEIGHT_FILES:  # safetensors first; a .bin is read with weights_only
        path = _fetch(repo, name, revision, text)
        if path is None:
            continue
        if name.endswith(".index.json"):
            for shard in sorted(set(read_json(path).get("weight_map", {}).values())):
                if _fetch(repo, shard, revision, text) is None:
                    raise _not_cached(text, repo, revision)
        return folder
    if hub_offline():
        raise _not_cached(text, repo, revision)
    raise CheckpointError(
        f"{text}: {repo} has a config.json but no {' / '.join(HF_WEIGHT_FILES[::2])}; "
        "not a VideoMAE checkpoint aptune can load"
    )


__all__ = ["hub_cache_dir", "hub_offline", "is_hub_id", "parse_hub_id", "resolve_hub_checkpoint"]
