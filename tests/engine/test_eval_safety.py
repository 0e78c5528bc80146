"""Evaluation never throws training away (issue 28): unreadable validation/test videos are
named before the first step (or, with --eval_skip_unreadable, excluded and counted), the
epoch's checkpoint is written before its validation, and defaults that cannot hurt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from engine_support import TINY

import aptune.engine.run
from aptune.cli import main
from aptune.engine import builders
from aptune.engine.eval_lists import UNREADABLE_FILE
from aptune.engine.fit import Resumed


def _with_truncated_val(square_data: Path, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the lists whose validation list also holds a truncated mp4."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.csv", "test.csv", "classes.txt"):
        shutil.copy(square_data / name, data / name)
    val = (square_data / "val.csv").read_text().splitlines()
    first = val[0].split()[0]
    cut = tmp_path / "cut.mp4"
    whole = Path(first).read_bytes()
    cut.write_bytes(whole[: len(whole) // 3])  # moov atom at the end: nothing indexable
    (data / "val.csv").write_text("\n".join(val + [f"{cut} 0"]) + "\n")
    return data, str(cut)


def _flags(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY, "--transfer_type", "linear", "--data_path", str(data),
            "--output_dir", str(out), "--batch_size", "8", "--epochs", "1",
            "--max_steps_per_epoch", "1", *extra]  # fmt: skip


def test_truncated_val_video_is_named_before_the_first_step(square_data, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    data, cut = _with_truncated_val(square_data, tmp_path)
    steps = []
    real = aptune.engine.run.fit
    monkeypatch.setattr(aptune.engine.run, "fit", lambda *a, **k: steps.append(1) or real(*a, **k))
    out = tmp_path / "run"
    assert main(_flags(data, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aptune: error: 1 unreadable video(s)") and cut in err[-1]
    assert "--eval_skip_unreadable" in err[-1] and UNREADABLE_FILE in err[-1]
    assert not steps and not (out / "log.txt").exists()
    assert not list(out.glob("checkpoint-*"))
    assert (out / UNREADABLE_FILE).read_text().startswith(f"{cut}\t")


def test_with_the_option_the_video_is_excluded_and_counted(square_data, tmp_path):
    data, cut = _with_truncated_val(square_data, tmp_path)
    out = tmp_path / "run"
    assert main(_flags(data, out, "--eval_skip_unreadable")) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["eval_excluded"] == {"count": 1, "videos": [cut]}
    assert metrics["test"]["num_videos"] == 24
    line = json.loads((out / "log.txt").read_text().splitlines()[0])
    assert "val_top1" in line  # validation ran on the readable videos
    report = (out / "report.html").read_text()
    assert "1 unreadable validation/test video(s) excluded" in report and cut in report


def test_the_epoch_checkpoint_is_written_before_validation(square_data, tmp_path, monkeypatch):
    def broken(model, loader, info, precision, cfg, desc):
        raise RuntimeError(f"{desc} failed")

    monkeypatch.setattr(aptune.engine.run, "evaluate_split", broken)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="val failed"):
        main(_flags(square_data, out))
    assert (out / "checkpoint-0000" / "COMPLETE").is_file()
    assert json.loads((out / "log.txt").read_text())["epoch"] == 0


def test_resume_replays_the_best_the_epoch_checkpoint_missed(tmp_path):
    """An epoch checkpoint holds the best before its own validation; log.txt has it."""
    history = [{"epoch": 0, "val_top1": 50.0, "val_top5": 90.0},
               {"epoch": 1, "val_top1": 60.0, "val_top5": 95.0},
               {"epoch": 2, "val_top1": 60.0, "val_top5": 99.0}]  # fmt: skip
    extra = {"best": {"top1": 50.0, "top5": 90.0, "epoch": 0}}  # checkpoint-0002's record
    best = aptune.engine.run._best_so_far(tmp_path, Resumed(3, extra), history)
    assert best == {"top1": 60.0, "top5": 95.0, "epoch": 1}
    # a line of the epoch being redone is not used
    assert aptune.engine.run._best_so_far(tmp_path, Resumed(1, extra), history) == extra["best"]


def test_frozen_random_backbone_says_so(square_data, tmp_path, caplog):
    out = tmp_path / "run"
    caplog.set_level("INFO", logger="aptune")
    assert main(_flags(square_data, out)) == 0  # linear, no --finetune
    said = [r.getMessage() for r in caplog.records if "frozen, randomly" in r.getMessage()]
    assert len(said) == 1 and "--finetune" in said[0]
    assert said[0] in json.loads((out / "metrics.json").read_text())["warnings"]
    assert json.loads((out / "log.txt").read_text().splitlines()[0])["warning"] == said[0]
    assert "frozen, randomly initialised backbone" in (out / "report.html").read_text()


def test_num_workers_is_capped_at_the_usable_cpus(monkeypatch, caplog):
    builders.loader_workers.cache_clear()
    monkeypatch.setattr(builders, "usable_cpus", lambda: 2)
    caplog.set_level("INFO", logger="aptune")
    assert builders.loader_workers(10) == 2 and builders.loader_workers(10) == 2
    assert builders.loader_workers(1) == 1
    said = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert said == ["--num_workers 10 capped at 2: the CPUs this process may use"]
    builders.loader_workers.cache_clear()
