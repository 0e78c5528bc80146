"""A finished run as a ready model: ``aptune.load_run`` and what predict/extract/export share.

The run folder already says everything needed to rebuild the model (``config.yaml``), which
weights to load (``checkpoint-best`` or the newest ``checkpoint-NNNN``) and what the classes
are called (``classes.txt``). This module reads it through ``engine.run`` (which checks the
checkpoint) so every consumer builds the model exactly as training did.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from aptune.config import ConfigError, RunConfig
from aptune.data import DataConfig
from aptune.data.lists import read_class_names
from aptune.engine.builders import data_config
from aptune.engine.distributed import DistInfo
from aptune.engine.run import load_trained_model
from aptune.models.vit import VisionTransformer
from aptune.sharing.adapter_load import adapter_source, read_adapter_checkpoint

log = logging.getLogger("aptune")
WHICH = ("best", "last")


@dataclass
class TrainedRun:
    """A run's configuration, its model (eval mode) and class names."""

    config: RunConfig
    model: VisionTransformer
    class_names: list[str]
    which: str
    device: torch.device

    @property
    def data(self) -> DataConfig:
        """The run's data options (test views, sizes, sampling) as training used them."""
        return data_config(self.config)

    @property
    def views_per_video(self) -> int:
        return self.config.data.test_num_segment * self.config.data.test_num_crop


def resolve_which(run: Path, which: str) -> str:
    """``best`` falls back to ``last`` for runs trained without validation (no best)."""
    if which not in WHICH:
        raise ConfigError(f"which must be one of {WHICH}, got {which!r}")
    if which == "best" and not (run / "checkpoint-best" / "model.safetensors").is_file():
        log.info("%s has no checkpoint-best (trained without validation): using the last", run)
        return "last"
    return which


def class_names_of(run: Path, n: int) -> list[str]:
    """``classes.txt`` of the run when it names ``n`` classes, else ``"0"``..``"n-1"``."""
    path = run / "classes.txt"
    if path.is_file():
        names = read_class_names(path)
        if names and len(names) == n:
            return names
    return [str(i) for i in range(n)]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def open_run(
    run: str | os.PathLike,
    which: str = "best",
    device: str | torch.device | None = None,
    overrides: dict | None = None,
) -> TrainedRun:
    """Rebuild a run's model with its trained weights; ``overrides`` replace config flags
    (e.g. ``{"test_num_crop": 1}``) before the model and data options are derived.

    ``run`` may also be an adapter folder (``aptune export --format adapter``) or its Hub id
    (``ORG/NAME``, ``ORG/NAME@REV``, ``hf://ORG/NAME``): it holds one checkpoint, its own."""
    adapter = adapter_source(run)  # a Hub id becomes its cached snapshot folder
    if adapter is not None:
        run, which = adapter, read_adapter_checkpoint(adapter)
    run = Path(run)
    if not run.is_dir():
        raise ConfigError(
            f"{run}: no such run folder; give the output_dir of an aptune train run, an "
            "adapter folder or its Hub id (ORG/NAME)"
        )
    if adapter is None:
        which = resolve_which(run, which)
    dev = torch.device(device) if device is not None else default_device()
    cfg, model = load_trained_model(run, which, DistInfo(device=dev), overrides)
    model.eval()
    names = class_names_of(run, cfg.data.nb_classes)
    return TrainedRun(cfg, model, names, which, dev)


def load_run(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device | None = None
) -> VisionTransformer:
    """The model a training run produced: its architecture and method (APT prompts,
    adapters, LoRA, ...) with the trained weights of ``checkpoint-best`` (``which="best"``,
    falls back to the last when the run had no validation) or of the newest checkpoint
    (``"last"``), in eval mode on ``device`` (default: CUDA if available, else CPU).

    The model maps normalised clips ``(B, 3, T, H, W)`` to logits ``(B, classes)``;
    ``model.class_names`` and ``model.run_config`` (the run's flags as a dict) are attached.
    Use ``aptune predict`` (or ``VideoClipDataset`` with the run's data options) to turn video
    files into the clips the run was trained on.

    ``run_dir`` may also be an adapter folder or the Hub id of one (``"ORG/NAME"``,
    ``"ORG/NAME@REV"``, ``"hf://ORG/NAME"``, from the Hub cache and offline once cached):
    its base model is fetched as recorded and checked, then the adapter's tensors loaded.
    """
    trained = open_run(run_dir, which, device)
    model = trained.model
    model.class_names = trained.class_names
    model.run_config = trained.config.to_dict()
    return model
