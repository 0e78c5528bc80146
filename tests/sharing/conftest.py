"""Fixtures of the sharing tests: a Hugging Face VideoMAE base and one finished run per
method on it (``sharing_support.py`` says how they are made)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sharing_support import METHODS, hf_videomae, make_run  # noqa: E402


@pytest.fixture(scope="session")
def hf_base(tmp_path_factory) -> Path:
    """A Hugging Face VideoMAE folder (config.json + model.safetensors)."""
    folder = tmp_path_factory.mktemp("hf_base") / "videomae-tiny"
    hf_videomae().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def runs(hf_base, tmp_path_factory) -> dict[str, Path]:
    """One finished run per method of ``METHODS``, all on ``hf_base``."""
    root = tmp_path_factory.mktemp("runs")
    return {
        key: make_run(root / key, ttype, str(hf_base), **flags)
        for key, (ttype, flags) in METHODS.items()
    }
