"""Probe a list of videos before a run depends on them: open each, read its header.

Why: an unreadable validation or test video used to surface only when evaluation reached
it, after an epoch of training. A probe opens the container and indexes its packets with
the same reader training uses (``open_video``; no frame is decoded), a few milliseconds
a file, so every bad file of a list is known at start-up. The readers spend their time
in FFmpeg (which releases the GIL), so a thread pool probes files in parallel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from .decode import open_video
from .errors import VideoDecodeError

#: lists at least this long get a progress bar (a short one is done before it could draw)
PROGRESS_FROM = 200


def probe_video(path: str, backend: str = "auto") -> str | None:
    """None if ``path`` opens and has frames, else the one-line reason it does not."""
    try:
        with open_video(path, backend) as reader:
            if reader.num_frames <= 0:
                return f"video has no frames: {path}"
    except VideoDecodeError as exc:
        return str(exc)
    except Exception as exc:  # a reader may raise anything on a damaged file
        return f"cannot open video {path}: {' '.join(str(exc).split()) or type(exc).__name__}"
    return None


def usable_cpus() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def probe_videos(
    paths: Sequence[str],
    backend: str = "auto",
    workers: int | None = None,
    progress: bool = True,
    desc: str = "probe",
) -> list[tuple[str, str]]:
    """(path, reason) of every unreadable video of ``paths``, in list order, each once."""
    from tqdm import tqdm

    unique = list(dict.fromkeys(paths))
    threads = min(workers or usable_cpus(), max(1, len(unique)))
    show = progress and len(unique) >= PROGRESS_FROM
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(lambda p: probe_video(p, backend), unique)
        reasons = list(tqdm(results, total=len(unique), desc=desc, unit="video",
                            disable=not show))  # fmt: skip
    return [(p, why) for p, why in zip(unique, reasons) if why is not None]
