"""APT on a tiny V-JEPA 2 end to end: train, test with merged tokens, reload, eval, predict."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import TINY, square_clip, write_dataset  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402
from aptune.config import RunConfig  # noqa: E402
from aptune.data.synthetic import write_video  # noqa: E402
from aptune.engine import builders as T  # noqa: E402
from aptune.engine.distributed import DistInfo  # noqa: E402
from aptune.engine.optim import param_groups  # noqa: E402

VJ = "vjepa2_vit_nano_patch16_256"
FLAGS = [*TINY, "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--opt", "adamw",
         "--lr", "0.01", "--seed", "0", "--save_ckpt_freq", "1",
         "--init_scale", "50"]  # fmt: skip
# a head of unit-scale weights: logits far enough apart for the merges to differ visibly
FLAGS[FLAGS.index("--model") + 1] = VJ


@pytest.fixture(scope="module")
def vjepa2_run(tmp_path_factory, request):
    """A tiny V-JEPA 2 trained with APT; the model object training used is kept."""
    # 32-frame videos: the two 8-frame test segments differ (identical segments would make
    # the joined tokens pool exactly as one segment's)
    data = write_dataset(tmp_path_factory.mktemp("vj_data"), {"train": 2, "val": 1, "test": 2},
                         frames=32)  # fmt: skip
    out = tmp_path_factory.mktemp("vj_run")
    built: list = []
    real = T.build_run_model

    def keep(cfg, info):
        built.append(real(cfg, info))
        return built[-1]

    mp = pytest.MonkeyPatch()
    mp.setattr(T, "build_run_model", keep)
    try:
        flags = [*FLAGS, "--transfer_type", "prompt", "--prompt_num_tokens", "2",
                 "--data_path", str(data), "--output_dir", str(out)]  # fmt: skip
        assert main(["train", *flags]) == 0
    finally:
        mp.undo()
    return out, built[0], data


def test_apt_trains_and_tests_with_merged_tokens(vjepa2_run):
    out, trained, _ = vjepa2_run
    metrics = json.loads((out / "metrics.json").read_text())
    # 8 videos, each 2 segments x 2 crops; the segments joined as tokens (auto for V-JEPA 2)
    assert metrics["test"]["num_videos"] == 8 and metrics["test"]["views_per_video"] == 4
    groups = metrics["parameters"]["groups"]
    assert set(groups) == {"backbone", "head (pooler + head)", "apt prompts"}
    assert groups["backbone"]["trainable"] == 0
    assert groups["apt prompts"]["trainable"] == 2 * 2 * 2 * 32  # blocks x k/v x tokens x 32
    log = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1] and all(np.isfinite(r["train_loss"]) for r in log)
    assert type(trained).__name__ == "VJepa2" and trained.head_kind == "attentive"


def test_load_run_rebuilds_the_trained_model(vjepa2_run):
    out, trained, _ = vjepa2_run
    model = aptune.load_run(out, which="last", device="cpu")
    assert type(model).__name__ == "VJepa2" and model.head_kind == "attentive"
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x), rtol=0, atol=0)


def test_eval_repeats_the_test_and_softmax_merge_is_an_option(vjepa2_run, tmp_path, capsys):
    out, _, _ = vjepa2_run
    assert main(["eval", str(out), "--output", str(tmp_path / "tokens")]) == 0
    logged = json.loads((out / "metrics.json").read_text())["test"]
    again = json.loads((tmp_path / "tokens" / "eval_metrics.json").read_text())["test"]
    assert (again["top1"], again["loss"]) == (logged["top1"], logged["loss"])
    assert main(["eval", str(out), "--output", str(tmp_path / "soft"),
                 "--segment_merge", "softmax"]) == 0  # fmt: skip
    soft = json.loads((tmp_path / "soft" / "eval_metrics.json").read_text())["test"]
    assert soft["views_per_video"] == 4 and soft["loss"] != logged["loss"]


def test_predict_uses_the_runs_merge(vjepa2_run, tmp_path, capsys):
    out, _, _ = vjepa2_run
    rng = np.random.default_rng(5)
    video = tmp_path / "left.mp4"
    write_video(video, square_clip("left", 32, 48, rng), 25)
    from aptune.commands.predict import view_probs
    from aptune.engine.trained import open_run

    run = open_run(out, "last", device="cpu")
    tokens = view_probs(run, [str(video)])
    soft = view_probs(open_run(out, "last", device="cpu",
                               overrides={"segment_merge": "softmax"}), [str(video)])  # fmt: skip
    assert tokens.shape == (1, 4) and abs(float(tokens.sum()) - 1) < 1e-5
    assert not torch.allclose(tokens, soft)
    assert main(["predict", str(video), "--run", str(out), "--which", "last", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)[0]["topk"]
    assert printed[0][2] == pytest.approx(float(tokens.max()), abs=1e-6)


def test_info_rebuilds_the_runs_head(vjepa2_run, capsys):
    out, _, _ = vjepa2_run
    assert main(["info", str(out)]) == 0
    assert "head (pooler + head)" in capsys.readouterr().out


def test_linear_trains_only_the_attentive_head_grouped_as_the_head():
    cfg = RunConfig.from_values({"model": VJ, "transfer_type": "linear", "nb_classes": 4,
                                 "num_frames": 4, "input_size": 32})  # fmt: skip
    model = T.build_run_model(cfg, DistInfo())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("pooler.", "head."))}  # fmt: skip
    assert any(n.startswith("pooler.blocks.") for n in trainable)
    groups = param_groups(model, 0.05, head_lr_scale=10.0)
    assert {g["name"] for g in groups} == {"decay_head", "no_decay_head"}
    assert all(g["lr_scale"] == 10.0 for g in groups)
    report = aptune.parameter_report(model)
    assert report.groups["head (pooler + head)"][0] == report.trainable


def test_pretrain_refuses_a_vjepa2_model(tmp_path, capsys):
    assert main(["pretrain", "--model", VJ, "--data_path", str(tmp_path),
                 "--output_dir", str(tmp_path / "out")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "aptune pretrain trains VideoMAE encoders" in err[0]


def test_extract_merges_as_evaluation_and_keeps_normed_tokens(vjepa2_run, tmp_path):
    from safetensors import safe_open

    from aptune.commands.extract import extract_features
    from aptune.commands.predict import view_probs
    from aptune.engine.trained import open_run

    out_dir, _, data = vjepa2_run
    videos = sorted(str(p) for p in (data / "videos" / "test").glob("*.mp4"))[:3]
    run = open_run(out_dir, "last", device="cpu")
    out = tmp_path / "f.safetensors"
    assert extract_features(run, videos, out, tokens=True, progress=False) == (3, [])
    with safe_open(str(out), "pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert meta["segment_merge"] == "tokens"
    torch.testing.assert_close(t["probs"], view_probs(run, videos), rtol=1e-5, atol=1e-6)
    assert t["tokens"].shape == (3, 4, 2, 2, 64)  # 8 frames / 2, 32 px / 16
    # tokens after V-JEPA 2's final norm: each token's mean over D is the norm's bias mean
    bias = run.model.norm.bias.detach().mean()
    assert torch.allclose(t["tokens"].mean(-1), bias.expand(3, 4, 2, 2), atol=1e-4)


def test_linear_probe_from_meta_files_saves_and_reloads_the_head_only(vjepa2_run, tmp_path):
    """``--finetune vitl.pt --head_checkpoint probe.pt --transfer_type linear`` (Meta's file
    layouts, a tiny size): only the attentive head trains and is saved; load_run rebuilds
    the encoder from the .pt and the head from the run."""
    from safetensors import safe_open

    from aptune.models.vjepa2 import create_vjepa2

    _, _, data = vjepa2_run
    torch.manual_seed(7)
    src = create_vjepa2(VJ, num_classes=4, num_frames=8, img_size=32).state_dict()
    encoder = {f"module.backbone.{k}": v for k, v in src.items()
               if not k.startswith(("pooler.", "head."))}  # fmt: skip
    torch.save({"target_encoder": encoder, "epoch": 10}, tmp_path / "vit.pt")
    probe = {f"module.{k.replace('head.', 'linear.', 1) if k.startswith('head.') else k}": v
             for k, v in src.items() if k.startswith(("pooler.", "head."))}  # fmt: skip
    torch.save({"classifiers": [probe]}, tmp_path / "probe.pt")
    out = tmp_path / "run"
    built: list = []
    real = T.build_run_model
    mp = pytest.MonkeyPatch()
    mp.setattr(T, "build_run_model", lambda cfg, info: built.append(real(cfg, info)) or built[-1])
    try:
        flags = [*FLAGS, "--transfer_type", "linear", "--finetune", str(tmp_path / "vit.pt"),
                 "--head_checkpoint", str(tmp_path / "probe.pt"), "--epochs", "1",
                 "--data_path", str(data), "--output_dir", str(out)]  # fmt: skip
        assert main(["train", *flags]) == 0
    finally:
        mp.undo()
    trained = built[0].eval()
    for k, v in trained.state_dict().items():
        if not k.startswith(("pooler.", "head.")):  # the encoder stayed Meta's
            torch.testing.assert_close(v, src[k], rtol=0, atol=0, msg=k)
    assert not torch.equal(trained.head.weight, src["head.weight"])  # the head trained
    with safe_open(str(out / "checkpoint-0000" / "model.safetensors"), "pt") as f:
        assert {k.split(".")[0] for k in f.keys()} == {"pooler", "head"}
    model = aptune.load_run(out, which="last", device="cpu")
    x = torch.randn(2, 3, 8, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)
