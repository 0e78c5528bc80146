"""The command line's error contract: a user's mistake is one line, a bug keeps its traceback."""

from __future__ import annotations

import pytest

import aptune.engine
from aptune.cli import main


def test_a_user_error_is_one_line_naming_the_flag(capsys):
    assert main(["train", "--model", "vit_foo", "--output_dir", "o"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [err[0]] and err[0].startswith("aptune: error: --model 'vit_foo' is not a model")
    assert "vit_base_patch16_224" in err[0]


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    def broken(cfg):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr(aptune.engine, "train", broken)
    with pytest.raises(ValueError, match="an internal invariant broke"):
        main(["train", "--output_dir", "o"])
