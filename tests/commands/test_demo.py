"""`aptune demo`: end to end in its quick form, and its argument checks."""

from __future__ import annotations

import json

import pytest

from aptune.cli import main
from aptune.commands.demo import RECIPES, results_table, standard_error_note


@pytest.mark.slow
def test_quick_demo_runs_end_to_end_and_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--quiet", "--out", str(out)]) == 0
    rows = json.loads((out / "demo_results.json").read_text())
    assert [r["method"] for r in rows] == ["linear", "prompt", "end2end"]
    by = {r["method"]: r for r in rows}
    # tunable counts of the bundled vit_micro (D 128, depth 4, heads 4), 10 classes
    head = 2 * 128 + 128 * 10 + 10
    assert by["linear"]["tunable"] == head
    assert by["prompt"]["tunable"] == head + 4 * 2 * 64 * 32 + 4 * 2 * 64
    assert by["end2end"]["tunable_percent"] > 100 > by["prompt"]["tunable_percent"]
    for r in rows:
        assert 0 <= r["top1"] <= r["top5"] <= 100 and r["peak_memory_mb"] > 0
        assert len(r["val_top1_curve"]) == 2
    for name in ("demo_results.md", "accuracy_vs_params.png", "learning_curves.png"):
        assert (out / name).stat().st_size > 0
    # every video decoded once into the cache the runs share, none of them twice
    videos = list((out / "data" / "videos").rglob("*.mp4"))
    assert len(videos) == 10 * (6 + 2 + 3)
    assert len(list((out / "data" / "decode_cache").rglob("*.npy"))) == len(videos)
    printed = capsys.readouterr().out
    assert "| APT (64 tokens) |" in printed and str(out / "demo_results.md") in printed


def test_unknown_method_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--methods", "linear,aptt", "--out", str(tmp_path)]) == 2
    assert "--methods: unknown 'aptt'" in capsys.readouterr().err


def test_bad_backbone_is_a_one_line_error_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "not_a_backbone.safetensors"
    bad.write_text("hello")
    assert main(["demo", "--backbone", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err and "safetensors" in err
    assert main(["demo", "--backbone", str(tmp_path / "missing.safetensors")]) == 2
    assert "missing.safetensors: no such backbone file" in capsys.readouterr().err


def test_results_table_has_one_row_per_method():
    rows = [
        dict(label=RECIPES[m].label, tunable=10**i, tunable_percent=0.1 * i, top1=50.0,
             top5=90.0, train_time_s=3.0, peak_memory_mb=100)
        for i, m in enumerate(["linear", "prompt"], 1)
    ]  # fmt: skip
    table = results_table(rows).splitlines()
    assert len(table) == 4 and table[2].startswith("| linear probe | 10 |")


def test_standard_error_note_is_the_binomial_maximum():
    # sqrt(0.5 * 0.5 / 500) = 2.24%; a difference of two: x sqrt(2) = 3.16
    note = standard_error_note(500)
    assert "500 test videos" in note and "at most 2.2 points, 3.2 for the difference" in note
    assert "at most 1.6 points" in standard_error_note(1000)


def test_bad_jobs_is_a_one_line_error(tmp_path, capsys):
    assert main(["demo", "--jobs", "0", "--out", str(tmp_path)]) == 2
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err
