"""What a trained run gives back: aptune.load_run, predict --timeline, extract.

The run is the engine tests' `trained_run` (a tiny ViT that tells four coloured squares
moving left/right/up/down apart); the long video is made of segments of those motions.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

ENGINE_TESTS = Path(__file__).resolve().parents[1] / "engine"
sys.path.insert(0, str(ENGINE_TESTS))
from engine_support import square_clip  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402
from aptune.commands.extract import extract_features  # noqa: E402
from aptune.commands.predict import predict_timeline, predict_videos, view_probs  # noqa: E402
from aptune.commands.timeline import WindowStream, plan_windows, segments  # noqa: E402
from aptune.data import open_video  # noqa: E402
from aptune.data.synthetic import write_video  # noqa: E402
from aptune.engine.trained import open_run  # noqa: E402

SEGMENTS = ["right", "up", "left", "down"]
SEG_FRAMES = 64  # 2.56 s at 25 fps; the run's clip spans 8 frames x rate 4 = 32 frames
FPS = 25


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """10.24 s: four 64-frame segments, each a square moving one way (its own colour)."""
    rng = np.random.default_rng(7)
    frames = np.concatenate([square_clip(d, SEG_FRAMES, 48, rng) for d in SEGMENTS])
    return write_video(tmp_path_factory.mktemp("long") / "long.mp4", frames, FPS)


def test_load_run_is_the_trained_model_in_eval_mode(trained_run):
    model = aptune.load_run(trained_run, which="last")
    assert not model.training and model.class_names == ["left", "right", "up", "down"]
    assert model.run_config["model"] == "vit_nano" and model.run_config["num_frames"] == 8
    from safetensors.torch import load_file

    from aptune.engine.checkpoint import find_latest_checkpoint

    saved = load_file(str(find_latest_checkpoint(trained_run) / "model.safetensors"))
    state = model.state_dict()
    assert saved and all(torch.equal(state[k], v) for k, v in saved.items())
    x = torch.randn(2, 3, 8, 32, 32)
    assert torch.equal(model(x), model(x))  # eval mode: no dropout / drop-path
    best = aptune.load_run(trained_run)  # default "best": a different epoch's weights
    assert not torch.equal(best.head.weight, model.head.weight)


def test_load_run_errors_are_one_line(tmp_path):
    from aptune.config import ConfigError

    with pytest.raises(ConfigError, match="no such run folder"):
        aptune.load_run(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no config.yaml"):
        aptune.load_run(tmp_path)


def test_plan_windows_cover_the_video_every_stride():
    wins = plan_windows(256, 25.0, 8, 4, 0.32)  # span 29 frames, stride 8 frames
    assert [w.start for w in wins] == list(range(0, 256 - 29 + 1, 8))
    assert wins[1].indices == [8 + 4 * i for i in range(8)] and wins[1].start_s == 0.32
    assert wins[0].end_s == 1.28
    short = plan_windows(10, 25.0, 8, 4, 1.0)  # shorter than one clip: one padded window
    assert len(short) == 1 and short[0].indices[-1] == 9
    with pytest.raises(ValueError, match="--stride"):
        plan_windows(100, 25.0, 8, 4, 0)


def test_window_stream_memory_does_not_grow_with_length(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.concatenate([square_clip("right", 40, 32, rng) for _ in range(10)])  # 400
    video = write_video(tmp_path / "v.mp4", frames, 25)
    with open_video(video, "pyav") as reader:
        wins = plan_windows(reader.num_frames, reader.fps, 8, 4, 0.2)
        stream = WindowStream(reader, wins, chunk=16)
        got = [(w.start, clip) for w, clip in stream]
    assert len(got) == len(wins) > 60
    assert all(clip.shape == (8, 32, 32, 3) for _, clip in got)
    # the window at frame 200 holds frames 200, 204, ... of the video
    start, clip = next(g for g in got if g[0] == 200)
    assert np.abs(clip.astype(int) - frames[200:232:4].astype(int)).mean() < 8
    # at most a clip's span (29 frames) + one chunk + one stride of frames, not all 400
    assert stream.max_buffered <= 29 + 16 + 5


def test_timeline_finds_the_segments(trained_run, long_video):
    trained = open_run(trained_run, "last")
    rows, probs, meta = predict_timeline(trained, str(long_video), 0.32, progress=False)
    assert probs.shape == (len(rows), 4) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert meta["max_buffered_frames"] < 80  # streamed, not the whole 256-frame video
    # every window lying inside one segment is labelled with that segment's motion
    for row in rows:
        seg_start, seg_end = int(row["start_s"] * FPS), int(row["end_s"] * FPS) - 1
        if seg_start // SEG_FRAMES == seg_end // SEG_FRAMES:
            assert row["topk"][0][1] == SEGMENTS[seg_start // SEG_FRAMES], row
    assert [s["name"] for s in segments(rows)] == SEGMENTS


def test_predict_timeline_cli_writes_csv_json_png(trained_run, long_video, tmp_path, capsys):
    out = tmp_path / "tl"
    argv = ["predict", str(long_video), "--run", str(trained_run), "--which", "last",
            "--timeline", "--stride", "0.64", "--out", str(out), "--batch_size", "3", "--bf16",
            "--no_progress", "--topk", "3"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in SEGMENTS) and "windows" in printed
    with open(out / "long.timeline.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:5] == ["start_s", "end_s", "label", "name", "prob"]
    assert "top3_prob" in rows[0] and len(rows) == int((256 - 29) / 16) + 1
    doc = json.loads((out / "long.timeline.json").read_text())
    assert doc["stride_s"] == 0.64 and len(doc["windows"]) == len(rows)
    assert [s["name"] for s in doc["segments"]] == SEGMENTS  # bf16 still finds them
    assert (out / "long.timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timeline_json_and_refusals(trained_run, long_video, tmp_path, capsys):
    base = ["predict", str(long_video), "--run", str(trained_run), "--which", "last"]
    assert main([*base, "--timeline", "--json", "--out", str(tmp_path), "--no_progress"]) == 0
    (item,) = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in item["segments"]] == SEGMENTS
    assert Path(item["files"]["csv"]).is_file()
    assert main([*base, "--stride", "2"]) == 2  # --stride means nothing without --timeline
    assert "--timeline" in capsys.readouterr().err
    other = tmp_path / "b" / "long.mp4"
    other.parent.mkdir()
    other.write_bytes(long_video.read_bytes())
    two = ["predict", str(long_video), str(other), "--run", str(trained_run), "--timeline"]
    assert main(two) == 2
    assert "named 'long'" in capsys.readouterr().err  # would overwrite each other


def test_extract_features_reproduce_predict(trained_run, square_data, tmp_path):
    videos = sorted(str(p) for p in (square_data / "videos" / "test").glob("*.mp4"))[:5]
    for views in ({}, {"test_num_segment": 1, "test_num_crop": 1}):
        trained = open_run(trained_run, "last", overrides=views or None)
        out = tmp_path / f"f{len(views)}.safetensors"
        n, failed = extract_features(trained, videos, out, tokens=True, progress=False)
        assert n == 5 and failed == []
        with safe_open(str(out), "pt") as f:
            meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        assert json.loads(meta["paths"]) == videos
        assert t["features"].shape == (5, 64) and t["tokens"].shape == (5, 4, 2, 2, 64)
        expected = view_probs(trained, videos)  # what aptune predict reports
        assert torch.allclose(t["probs"], expected, atol=1e-6)
        with torch.no_grad():
            from_features = torch.softmax(trained.model.head(t["features"]), dim=-1)
        assert torch.equal(from_features.argmax(1), expected.argmax(1))
        if views:  # one view: softmax(head(features)) is exactly predict's probability
            assert torch.allclose(from_features, expected, atol=1e-5)
        # the token grid pools to the features: fc_norm(mean of tokens) (one view exactly)
        if views:
            pooled = trained.model.fc_norm(t["tokens"].flatten(1, 3).mean(1))
            assert torch.allclose(pooled, t["features"], atol=1e-5)
    top = predict_videos(trained_run, videos, "last", overrides=None)
    assert [r["topk"][0][1] for r in top] == [Path(v).stem.split("_")[0] for v in videos]


def test_extract_list_counts_unreadable_and_resumes(trained_run, square_data, tmp_path,
                                                    monkeypatch, capsys):  # fmt: skip
    import aptune.commands.extract as ex

    good = sorted(str(p) for p in (square_data / "videos" / "test").glob("*.mp4"))[:5]
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    listed = [*good[:2], str(bad), *good[2:]]
    (tmp_path / "list.csv").write_text("".join(f"{v} 0\n" for v in listed))
    out = tmp_path / "feats.safetensors"
    argv = ["extract", "--list", str(tmp_path / "list.csv"), "--run", str(trained_run),
            "--which", "last", "--out", str(out), "--chunk", "2", "--no_progress"]  # fmt: skip
    calls = []
    real = ex._run_chunk

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(ex, "_run_chunk", interrupted)
    assert main(argv) == 130 and not out.exists()  # parts of the first chunk were kept
    assert len(list((tmp_path / "feats.safetensors.parts").glob("part-*"))) == 1
    other_chunks = [a if a != "2" else "3" for a in argv]  # parts of 2 videos cannot be reused
    assert main(other_chunks) == 2 and "--chunk" in capsys.readouterr().err
    calls.clear()
    monkeypatch.setattr(ex, "_run_chunk", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert main(argv) == 1  # some video was unreadable
    assert len(calls) == 2  # resumed: chunks 2 and 3 of 3 only
    err = capsys.readouterr().err
    assert "1 of 6 video(s) unreadable" in err and "broken.mp4" in err
    with safe_open(str(out), "pt") as f:
        meta, feats = f.metadata(), f.get_tensor("features")
    assert json.loads(meta["paths"]) == good and feats.shape == (5, 64)
    assert [p for p, _ in json.loads(meta["failed"])] == [str(bad.resolve())]
    assert not (tmp_path / "feats.safetensors.parts").exists()
    # the resumed file equals one written in a single go
    single = tmp_path / "single.safetensors"
    extract_features(open_run(trained_run, "last"), good, single, progress=False)
    with safe_open(str(single), "pt") as f:
        assert torch.allclose(f.get_tensor("features"), feats, atol=1e-6)


def test_extract_with_model_and_finetune_equals_the_run(trained_run, square_data, tmp_path):
    videos = sorted(str(p) for p in (square_data / "videos" / "test").glob("*.mp4"))[:2]
    by_run, by_ckpt = tmp_path / "run.safetensors", tmp_path / "ckpt.safetensors"
    quiet = ["--no_progress"]
    assert main(["extract", *videos, "--run", str(trained_run), "--out", str(by_run), *quiet]) == 0
    flags = ("--nb_classes 4 --num_frames 8 --input_size 32 --short_side_size 32 "
             "--data_set SSV2 --test_num_segment 2 --test_num_crop 2")  # fmt: skip
    ckpt = trained_run / "checkpoint-best" / "model.safetensors"
    assert main(["extract", *videos, "--model", "vit_nano", "--finetune", str(ckpt),
                 "--flags", flags, "--out", str(by_ckpt), *quiet]) == 0  # fmt: skip
    with safe_open(str(by_run), "pt") as a, safe_open(str(by_ckpt), "pt") as b:
        assert torch.equal(a.get_tensor("features"), b.get_tensor("features"))
    assert main(["extract", *videos, "--model", "vit_nano", "--out", str(by_ckpt)]) == 2
