"""Checkpoint integrity: sha256 per file, free-space checks, one-line disk errors.

Sizes alone miss a file whose bytes changed in place (bit rot, a partial copy over an
old file, a user's edit): such a checkpoint used to resume silently and end with other
weights. ``COMPLETE`` therefore records a sha256 per file and every reader re-hashes
(measured cost in docs/reliability.md). Kept apart from ``checkpoint.py`` because
``aptune info`` and the loaders need only these checks.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
from pathlib import Path

COMPLETE_FILE = "COMPLETE"
_CHUNK = 1 << 20
#: errors that mean "the disk cannot take this checkpoint", not a bug of ours
DISK_ERRNOS = {errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EFBIG}
_DISK_TEXT = ("No space left", "Input/output error", "Disk quota", "Read-only file system")


class IntegrityError(RuntimeError):
    """A checkpoint folder that is missing files, truncated or changed since written."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path) -> dict[str, dict]:
    """``{file: {"size", "sha256"}}`` of every file in ``folder`` (written before COMPLETE)."""
    return {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != COMPLETE_FILE
    }


def read_marker(folder: Path) -> dict:
    """The COMPLETE marker's JSON; IntegrityError when absent or unreadable."""
    marker = folder / COMPLETE_FILE
    if not marker.is_file():
        raise IntegrityError(f"{folder}: no {COMPLETE_FILE} marker (not written completely)")
    try:
        data = json.loads(marker.read_text())
        data["files"].items()
    except Exception:
        raise IntegrityError(f"{folder}: {COMPLETE_FILE} is not aptune's JSON marker") from None
    return data


def verify_files(folder: Path, hashes: bool = True) -> bool:
    """Check every file listed in COMPLETE; True when sha256s were checked (False: an older
    marker with sizes only). Raises IntegrityError naming the first bad file."""
    files = read_marker(folder)["files"]
    hashed = True
    for name, want in files.items():
        path = folder / name
        size = want if isinstance(want, int) else want.get("size")
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (listed in {COMPLETE_FILE})")
        if path.stat().st_size != size:
            raise IntegrityError(f"{path}: size differs from {COMPLETE_FILE} (truncated?)")
        digest = None if isinstance(want, int) else want.get("sha256")
        if digest is None:
            hashed = False
        elif hashes and sha256_file(path) != digest:
            raise IntegrityError(f"{path}: sha256 differs from {COMPLETE_FILE} (changed on disk)")
    return hashed


def status(folder: Path) -> str:
    """One word or phrase for ``aptune info``: verified / corrupt: ... / incomplete ..."""
    try:
        hashed = verify_files(folder)
    except IntegrityError as e:
        text = str(e)
        return "incomplete" if "no COMPLETE marker" in text else f"corrupt ({text})"
    return "verified (sha256)" if hashed else "sizes only (written before sha256 markers)"


def is_disk_error(e: BaseException) -> bool:
    """ENOSPC/EIO & co, also when a library re-raised them as its own exception type."""
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return True
    return any(t in str(e) for t in _DISK_TEXT)


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
