"""``aptune info RUN``: a run's checkpoints (each verified), config, parameters, metrics."""

from __future__ import annotations

from pathlib import Path

import yaml

from aptune.build import build_model
from aptune.engine.checkpoint import BEST_NAME, checkpoint_folders
from aptune.engine.integrity import status
from aptune.engine.run import run_checkpoint
from aptune.tuning import parameter_report


def print_info(run: Path) -> None:
    """Print the run's report; each part as soon as it is known, so a run whose config
    cannot be rebuilt still shows its checkpoints' status first."""
    run = Path(run)
    print(f"run: {run}\ncheckpoints (newest first):")
    folders = checkpoint_folders(run) + ([run / BEST_NAME] if (run / BEST_NAME).is_dir() else [])
    for folder in folders:
        print(f"  {folder.name}: {status(folder)}")
    if not folders:
        print("  none")
    cfg, ckpt = run_checkpoint(run, "last")
    print(f"latest verified checkpoint: {ckpt}")
    print(yaml.safe_dump(cfg.to_dict()))
    m = cfg.model
    model = build_model(
        m.model, num_classes=cfg.data.nb_classes, transfer_type=m.transfer_type,
        num_frames=m.num_frames, input_size=m.input_size, tubelet_size=m.tubelet_size,
        head=cfg.head_kind(), **cfg.method_options(),
    )  # fmt: skip
    print(parameter_report(model))
    metrics = run / "metrics.json"
    if metrics.is_file():
        print("final metrics:", metrics.read_text())
