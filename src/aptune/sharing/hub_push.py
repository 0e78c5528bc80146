"""Upload a folder to a Hugging Face model repository (``aptune push``).

The few calls the ``huggingface_hub`` docs show: ``HfApi.create_repo(exist_ok=True)``,
``create_branch`` for a ``--revision`` that does not exist yet, ``upload_folder``. The token
is ``HF_TOKEN`` or the one ``hf auth login`` cached (``huggingface_hub.get_token``). No
token, offline mode or a refusal by the Hub is one line saying what to do.
"""

from __future__ import annotations

import os
from pathlib import Path

from aptune.models.checkpoint_files import first_line
from aptune.models.hub import hub_offline, parse_hub_id
from aptune.sharing.errors import SharingError


def hub_token() -> str | None:
    """``HF_TOKEN``, else the login cache; None when neither has one."""
    if os.environ.get("HF_TOKEN"):
        return os.environ["HF_TOKEN"]
    from huggingface_hub import get_token

    return get_token() or None


def check_repo_id(repo: str) -> str:
    """``ORG/NAME`` (or ``hf://ORG/NAME``) -> ``ORG/NAME``; a revision belongs in --revision."""
    parsed = parse_hub_id(repo if repo.startswith("hf://") else f"hf://{repo}")
    if parsed is None or parsed[1] is not None:
        raise SharingError(f"--repo {repo}: give ORG/NAME (a branch goes to --revision)")
    return parsed[0]


def check_can_push() -> str:
    """The token to upload with, or one line saying how to get one."""
    if hub_offline():
        raise SharingError(
            "aptune push: HF_HUB_OFFLINE is set; unset it to upload (or keep the folder: "
            "aptune export RUN --format adapter --out DIR)"
        )
    token = hub_token()
    if not token:
        raise SharingError(
            "aptune push: no Hugging Face token; run `hf auth login` (older huggingface_hub: "
            "`huggingface-cli login`) or set HF_TOKEN to a token with write access"
        )
    return token


def upload(
    folder: Path, repo: str, token: str, private: bool = False, revision: str | None = None
) -> str:
    """Create the repository if needed and upload ``folder``; -> the commit's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo, branch=revision, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message="Upload aptune adapter",
        )
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        why = f"HTTP {status}" if status else type(e).__name__
        raise SharingError(
            f"aptune push: the Hub refused the upload to {repo} ({why}: {first_line(e)[:160]}); "
            f"check that the token may write to {repo.split('/')[0]} (a write token, the "
            "organisation's rights)"
        ) from None
    except OSError as e:  # no network: requests' ConnectionError is an OSError
        raise SharingError(
            f"aptune push: could not reach the Hub ({first_line(e)[:160]}); check the network"
        ) from None
    return str(getattr(info, "commit_url", None) or info)


__all__ = ["check_can_push", "check_repo_id", "hub_token", "upload"]
