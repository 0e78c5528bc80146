"""The engine: one training loop, evaluation, checkpoints and everything a run needs.

``loop`` runs one epoch or one evaluation pass, ``builders`` turns flags into data loaders,
model and optimiser, ``run`` drives whole train / eval jobs with resume; ``checkpoint`` and
``weights`` write and read run state, ``optim``, ``mixup``, ``metrics``, ``run_outputs``,
``precision`` (the arithmetic chosen for the card) and ``distributed`` are the parts the
loop uses. ``trained`` turns a finished run folder back
into a model (``aptune.load_run``) and ``html_report`` writes its ``report.html``. Imports
point down only: the engine uses build/config/tuning/models/data and never a command or
the CLI.
"""

from aptune.engine.checkpoint import ResumeError
from aptune.engine.distributed import DistInfo, unwrap
from aptune.engine.loop import NonFiniteLossError, predict_views, train_one_epoch
from aptune.engine.precision import Precision
from aptune.engine.run import (
    evaluate_config,
    evaluate_run,
    load_trained_model,
    run_checkpoint,
    train,
)
from aptune.engine.trained import TrainedRun, load_run, open_run

__all__ = [
    "DistInfo",
    "NonFiniteLossError",
    "Precision",
    "ResumeError",
    "TrainedRun",
    "evaluate_config",
    "evaluate_run",
    "load_run",
    "load_trained_model",
    "open_run",
    "run_checkpoint",
    "predict_views",
    "train",
    "train_one_epoch",
    "unwrap",
]
