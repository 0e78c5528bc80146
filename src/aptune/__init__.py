"""aptune: Attention Prompt Tuning of VideoMAE video transformers for action recognition."""

from __future__ import annotations

__version__ = "0.1.0"

from aptune.build import build_model, parameter_report  # noqa: E402
from aptune.engine.trained import load_run  # noqa: E402

__all__ = ["__version__", "build_model", "load_run", "parameter_report"]
