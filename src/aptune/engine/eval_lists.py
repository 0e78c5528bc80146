"""Start-up checks that keep a run's evaluation from failing (or lying) after training.

``check_eval_lists``: every validation and test video is probed (opened, header read, no
frame decoded) before the first epoch. An unreadable one used to stop the run at the
first validation, an epoch of training later; now all of them are named at once, before
any training, or, with ``--eval_skip_unreadable``, excluded and counted (never silently).
``frozen_backbone_warning``: a method that trains only its own parameters on a backbone
nobody pre-trained learns nothing worth measuring; the run says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aptune.config import RunConfig
from aptune.data.errors import DataError
from aptune.data.probe import probe_videos
from aptune.engine.distributed import DistInfo, all_gather_objects

log = logging.getLogger("aptune")

#: the run folder's list of unreadable evaluation videos (one ``path<TAB>reason`` a line)
UNREADABLE_FILE = "unreadable_eval_videos.txt"
EVAL_SPLITS = ("val", "test")


def frozen_backbone_warning(cfg: RunConfig, trains_backbone: bool) -> str | None:
    """The one-line warning for a frozen-backbone method without ``--finetune``, or None."""
    if trains_backbone or cfg.model.finetune:
        return None
    return (f"--transfer_type {cfg.model.transfer_type} trains on a frozen, randomly "
            "initialised backbone (no --finetune): its accuracy means nothing; give "
            "pre-trained weights with --finetune CKPT")  # fmt: skip


def _probe_on_main(cfg: RunConfig, datasets: dict, info: DistInfo) -> list[tuple[str, str]]:
    """Rank 0 probes the union of the evaluation lists; every rank gets its answer."""
    bad: list[tuple[str, str]] = []
    if info.is_main:
        paths = [p for s in EVAL_SPLITS if s in datasets for p in datasets[s].video_paths]
        bad = probe_videos(paths, cfg.data.decoder, progress=not cfg.job.no_progress,
                           desc="probe eval videos")  # fmt: skip
    return all_gather_objects(bad, info)[0]


def _exclude(datasets: dict, bad: set[str]) -> None:
    """Drop ``bad`` videos from the evaluation datasets; a split left empty is an error."""
    for split in EVAL_SPLITS:
        if split not in datasets:
            continue
        ds = datasets[split]
        ds.entries = [e for e in ds.entries if e.path not in bad]
        if not ds.entries:
            raise DataError(f"every video of the {split} list is unreadable ({ds.source}); "
                            "fix the videos or the list")  # fmt: skip


def check_eval_lists(cfg: RunConfig, datasets: dict, info: DistInfo, out: Path) -> list[str]:
    """Probe the validation/test videos; returns the excluded ones (empty without
    ``--eval_skip_unreadable``, where any unreadable video is a ``DataError`` naming the
    count, the first one and the file that lists them all)."""
    bad = _probe_on_main(cfg, datasets, info)
    if not bad:
        return []
    listing = out / UNREADABLE_FILE
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        listing.write_text("".join(f"{p}\t{why}\n" for p, why in bad))
    if not cfg.data.eval_skip_unreadable:
        raise DataError(
            f"{len(bad)} unreadable video(s) in the validation/test lists, first: "
            f"{bad[0][1]}; all listed in {listing}; fix or remove them, or add "
            "--eval_skip_unreadable to exclude them (counted in metrics.json)"
        )
    paths = [p for p, _ in bad]
    _exclude(datasets, set(paths))
    if info.is_main:
        log.warning("--eval_skip_unreadable: %d unreadable validation/test video(s) excluded "
                    "from evaluation (listed in %s)", len(paths), listing)  # fmt: skip
    return paths
