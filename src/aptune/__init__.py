"""aptune: Attention Prompt Tuning of VideoMAE video transformers for action recognition.

``build_model`` builds a backbone with a tuning method, ``train(RunConfig(...))`` runs a
training job without a command line, ``load_run`` turns a finished run into a model.
"""

from __future__ import annotations

__version__ = "0.1.0"

from aptune.build import build_model, parameter_report  # noqa: E402
from aptune.config import RunConfig  # noqa: E402
from aptune.engine.run import train  # noqa: E402
from aptune.engine.trained import load_run  # noqa: E402

__all__ = ["__version__", "RunConfig", "build_model", "load_run", "parameter_report", "train"]
