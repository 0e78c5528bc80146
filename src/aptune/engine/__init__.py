"""The engine: one training loop, evaluation, checkpoints and everything a run needs.

``loop`` runs one epoch or one evaluation pass, ``builders`` turns flags into data loaders,
model and optimiser, ``run`` drives whole train / eval jobs with resume; ``checkpoint`` and
``weights`` write and read run state, ``optim``, ``mixup``, ``metrics``, ``reports`` and
``distributed`` are the parts the loop uses. Imports point down only: the engine uses
build/config/tuning/models/data and never a command or the CLI.
"""

from aptune.engine.checkpoint import ResumeError
from aptune.engine.distributed import DistInfo, unwrap
from aptune.engine.loop import NonFiniteLossError, Precision, predict_views, train_one_epoch
from aptune.engine.run import evaluate_args, evaluate_run, load_run, load_trained_model, train

__all__ = [
    "DistInfo",
    "NonFiniteLossError",
    "Precision",
    "ResumeError",
    "evaluate_args",
    "evaluate_run",
    "load_run",
    "load_trained_model",
    "predict_views",
    "train",
    "train_one_epoch",
    "unwrap",
]
