"""Training, evaluation and prediction end to end on real video files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import TINY, square_clip  # noqa: E402

from aptune.cli import main  # noqa: E402
from aptune.data.synthetic import write_video  # noqa: E402


def test_training_beats_chance_and_writes_reports(trained_run: Path):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["test"]["num_videos"] == 24 and metrics["test"]["views_per_video"] == 4
    assert metrics["test"]["top1"] >= 75.0, metrics  # chance is 25%
    log = [json.loads(line) for line in (trained_run / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(4))
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(r["skipped_videos"] == 0 for r in log)
    preds = (trained_run / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 24
    first = json.loads(preds[0])
    assert first["label_name"] in ("left", "right", "up", "down") and len(first["top5"]) == 4
    for name in ("curves.png", "confusion.png", "config.yaml", "summary.md", "classes.txt"):
        assert (trained_run / name).is_file(), name
    assert any((trained_run / "tb").iterdir()), "TensorBoard scalars missing"
    assert (trained_run / "checkpoint-best" / "model.safetensors").is_file()
    report = (trained_run / "report.html").read_text()  # written at the end of every run
    assert "data:image/png;base64," in report and "top-1" in report.lower()


def test_eval_reproduces_logged_accuracy(trained_run: Path, tmp_path: Path, capsys):
    assert main(["eval", str(trained_run), "--output", str(tmp_path)]) == 0
    logged = json.loads((trained_run / "metrics.json").read_text())["test"]
    again = json.loads((tmp_path / "eval_metrics.json").read_text())
    assert again["test"]["top1"] == logged["top1"]
    assert again["test"]["top5"] == logged["top5"]
    assert set(again["per_class"]) == {"left", "right", "up", "down"}
    assert "top-1" in capsys.readouterr().out


def test_predict_names_the_class_of_new_videos(trained_run: Path, tmp_path: Path, capsys):
    rng = np.random.default_rng(123)
    videos = []
    for name in ("left", "down"):
        path = tmp_path / f"new_{name}.mp4"
        write_video(path, square_clip(name, 8, 48, rng), 25)
        videos.append(str(path))
    assert main(["predict", *videos, "--run", str(trained_run), "--json", "--topk", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [item["topk"][0][1] for item in out] == ["left", "down"]
    assert all(len(item["topk"]) == 3 for item in out)
    probs = [p for _, _, p in out[0]["topk"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6


def test_info_prints_config_and_parameters(trained_run: Path, capsys):
    assert main(["info", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "transfer_type: random" in out and "trainable" in out and "top1" in out


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--transfer_type", "promt"], "unknown method 'promt'"),
        (["--finetune", "/nonexistent/checkpoint.pth"], "/nonexistent/checkpoint.pth"),
        (["--num_frames", "7"], "--num_frames 7 must be a multiple of --tubelet_size"),
    ],
)
def test_bad_flags_give_one_line_errors(square_data, tmp_path, capsys, flags, message):
    args = ["train", *TINY, "--data_path", str(square_data), "--output_dir", str(tmp_path), *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("aptune: error:") and message in err[-1]


def test_missing_list_file_fails_before_training(tmp_path, capsys):
    assert main(["train", *TINY, "--data_path", str(tmp_path), "--output_dir",
                 str(tmp_path / "run")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "train.csv" in err and not (tmp_path / "run" / "log.txt").exists()


def test_peft_run_without_finetune_reloads_its_random_backbone(uninterrupted: Path):
    """No --finetune: the frozen backbone is random and exists only in the run, so the
    checkpoint keeps every tensor and two loads give the same model."""
    import torch
    from safetensors import safe_open

    import aptune

    with safe_open(str(uninterrupted / "checkpoint-0002" / "model.safetensors"), "pt") as f:
        assert "blocks.0.attn.qkv.weight" in f.keys()
    x = torch.randn(1, 3, 8, 32, 32)
    outs = []
    for seed in (1, 2):  # different init RNG for the rebuilt model each time
        torch.manual_seed(seed)
        outs.append(aptune.load_run(uninterrupted, which="last")(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_python_users_train_from_a_run_config(tmp_path: Path):
    """``aptune.train(RunConfig)``: the same job as ``aptune train``, its config.yaml the
    config it was given."""
    from engine_support import write_dataset

    import aptune

    data = write_dataset(tmp_path / "data", {"train": 2, "val": 1, "test": 1})
    values = {
        "model": "vit_nano", "data_set": "SSV2", "nb_classes": 4, "num_frames": 8,
        "input_size": 32, "short_side_size": 32, "num_workers": 0, "no_progress": True,
        "test_num_segment": 2, "test_num_crop": 2, "num_sample": 1, "attn_impl": "sdpa",
        "data_path": str(data), "output_dir": str(tmp_path / "run"), "batch_size": 4,
        "epochs": 1, "warmup_epochs": 0, "opt": "adamw", "lr": 0.01, "prompt_num_tokens": 2,
    }  # fmt: skip
    cfg = aptune.RunConfig.from_values(values)
    metrics = aptune.train(cfg)
    assert metrics["test"]["num_videos"] == 4
    saved = aptune.RunConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.to_dict() == cfg.to_dict()
    model = aptune.load_run(tmp_path / "run", which="last")
    assert model.kv_prompts.prompt_embeddings_k.shape[1] == 2
