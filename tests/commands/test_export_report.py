"""`aptune export` (ONNX checked by onnxruntime, TorchScript) and `aptune report` (HTML).

Runs: the engine tests' `trained_run` (full training, with validation) and an APT + LoRA
run fine-tuned from its weights here, so the exported graph must carry prompts and LoRA.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ENGINE_TESTS = Path(__file__).resolve().parents[1] / "engine"
sys.path.insert(0, str(ENGINE_TESTS))
from engine_support import TINY  # noqa: E402

import aptune  # noqa: E402
from aptune.cli import main  # noqa: E402
from aptune.commands.export import TOLERANCE, export_run  # noqa: E402
from aptune.engine.html_report import write_report  # noqa: E402


@pytest.fixture(scope="module")
def apt_run(trained_run, square_data, tmp_path_factory) -> Path:
    """APT prompts + LoRA on top of the trained tiny ViT, one epoch."""
    out = tmp_path_factory.mktemp("apt")
    flags = TINY + [
        "--transfer_type", "prompt+lora", "--finetune",
        str(trained_run / "checkpoint-best" / "model.safetensors"), "--data_path",
        str(square_data), "--output_dir", str(out), "--batch_size", "8", "--epochs", "1",
        "--lr", "0.05", "--disable_eval_during_finetuning", "--seed", "0",
    ]  # fmt: skip
    assert main(["train", *flags]) == 0
    return out


def _method_tensors_matter(model: torch.nn.Module, x: torch.Tensor) -> bool:
    """True if zeroing the prompt / LoRA tensors changes the output (they are in use)."""
    with torch.no_grad():
        ref = model(x)
        saved = {n: p.clone() for n, p in model.named_parameters() if "prompt" in n or "lora" in n}
        for n, p in model.named_parameters():
            if n in saved:
                p.zero_()
        changed = not torch.allclose(model(x), ref, atol=1e-5)
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    return changed and len(saved) > 0


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
def test_torchscript_export_has_the_methods_and_a_dynamic_batch(apt_run, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert main(["export", str(apt_run), "--format", "torchscript", "--out", str(out)]) == 0
    assert "max relative error" in capsys.readouterr().out
    model = aptune.load_run(apt_run)
    x = torch.randn(5, 3, 8, 32, 32)
    assert _method_tensors_matter(model, x)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)  # batch 5, traced with 2
    meta = json.loads((tmp_path / "model.pt.json").read_text())
    assert meta["class_names"] == ["left", "right", "up", "down"]
    assert meta["input"]["shape"] == ["batch", 3, 8, 32, 32] and meta["num_frames"] == 8
    assert meta["sampling"] == "segment" and meta["mean"] == [0.485, 0.456, 0.406]
    assert meta["transfer_type"] == "prompt+lora" and meta["check"]["max_relative_error"] < 1e-5


@pytest.mark.slow
def test_onnx_export_matches_pytorch_in_onnxruntime(apt_run, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "model.onnx"
    err = export_run(apt_run, "onnx", out)
    assert err < TOLERANCE and not (tmp_path / "model.onnx.data").exists()  # one file
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "clips"
    model = aptune.load_run(apt_run)
    for batch in (1, 4):
        x = torch.randn(batch, 3, 8, 32, 32)
        got = session.run(None, {"clips": x.numpy()})[0]
        with torch.no_grad():
            assert np.allclose(got, model(x).numpy(), atol=1e-4)
    assert json.loads((tmp_path / "model.onnx.json").read_text())["format"] == "onnx"


def test_onnx_falls_back_to_the_torchscript_based_exporter(apt_run, tmp_path, monkeypatch):
    real = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kw):
        if dynamo:
            raise RuntimeError("cannot capture this graph")
        return real(*args, dynamo=False, **kw)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    out = tmp_path / "legacy.onnx"
    assert export_run(apt_run, "onnx", out) < TOLERANCE  # checked in onnxruntime
    import onnxruntime as ort

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 8, 32, 32)
    with torch.no_grad():
        ref = aptune.load_run(apt_run)(x).numpy()
    assert np.allclose(session.run(None, {"clips": x.numpy()})[0], ref, atol=1e-4)


def test_onnx_without_the_extra_is_one_line(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    out = tmp_path / "m.onnx"
    assert main(["export", str(trained_run), "--format", "onnx", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install aptune[export]" in err and not out.exists()


def test_export_fails_when_the_file_does_not_reproduce_pytorch(trained_run, tmp_path,
                                                              monkeypatch, capsys):  # fmt: skip
    import aptune.commands.export as ex

    monkeypatch.setattr(ex, "check_torchscript", lambda *a: 3e-3)
    out = tmp_path / "m.pt"
    assert main(["export", str(trained_run), "--format", "torchscript", "--out", str(out)]) == 2
    assert "3.00e-03 > 1e-04" in capsys.readouterr().err
    assert not (tmp_path / "m.pt.json").exists()


def test_report_is_self_contained_and_has_every_section(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # one wrong, low-confidence prediction so the confusions and hardest lists have content
    lines = (run / "predictions.jsonl").read_text().splitlines()
    wrong = json.loads(lines[3])
    wrong.update(pred=2, pred_name="up", correct=False,
                 top5=[[2, "up", 0.7], [3, "down", 0.2], [0, "left", 0.1]])  # fmt: skip
    lines[3] = json.dumps(wrong)
    (run / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    conf = np.diag([6, 6, 6, 6])
    conf[0, 0], conf[0, 2] = 5, 1
    np.savetxt(run / "confusion.csv", conf, fmt="%d", delimiter=",")
    (run / "per_class.json").write_text(json.dumps({"left": 83.3, "right": 100.0, "up": 100.0,
                                                    "down": 100.0}))  # fmt: skip
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    for heading in ("Test metrics", "Training and validation curves", "Per-class accuracy",
                    "Confusion matrix", "Top confusions", "Hardest test videos", "Parameters",
                    "Config"):  # fmt: skip
        assert f">{heading}<" in page, heading
    # nothing fetched: every src is an embedded PNG, no links, scripts or stylesheets
    sources = re.findall(r"src='([^']*)'", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert not re.search(r"(href|src)=['\"]?https?:|<script|<link", page)
    from PIL import Image

    for s in sources:
        img = Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1])))
        assert img.size[0] > 200
    # per-class worst first; the confusion left -> up listed; the wrong video first
    assert page.index("83.3%") < page.index("100.0%")
    assert re.search(r"<td>left</td><td>up</td><td class=num>1</td>", page)
    hardest = page[page.index("Hardest test videos") :]
    assert "1 of 24 test videos wrong" in hardest
    assert hardest.index(wrong["path"]) < hardest.index("correct")
    assert "198,596" in page and "vit_nano" in page  # parameter report and config


def test_report_of_a_run_without_final_files_says_what_is_missing(trained_run, tmp_path):
    run = tmp_path / "early"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run)
    page = write_report(run).read_text()
    assert "No test metrics" in page and "No training log" in page and "vit_nano" in page


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium not installed")
def test_report_renders_in_headless_chromium(trained_run, tmp_path):
    page = write_report(trained_run)
    shot = tmp_path / "shot.png"
    cmd = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1000,1400",
           f"--screenshot={shot}", page.resolve().as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape == (1400, 1000)
    dark = img < 128  # text, plot lines, the KPI numbers
    assert dark.mean() > 0.01 and img.std() > 20  # not a blank page
    assert dark[: img.shape[0] // 2].mean() > 0.005  # the top half has content too


@pytest.mark.slow
def test_report_stays_readable_at_174_classes(trained_run, tmp_path):
    run = tmp_path / "ssv2"
    run.mkdir()
    shutil.copy(trained_run / "config.yaml", run)
    rng = np.random.default_rng(0)
    conf = np.diag(rng.integers(5, 20, 174))
    conf[3, 7] = 9  # the biggest confusion, listed first
    for _ in range(300):
        conf[rng.integers(174), rng.integers(174)] += 1
    np.fill_diagonal(conf, np.maximum(conf.diagonal(), 5))
    names = [f"action_{i:03d}" for i in range(174)]
    (run / "classes.txt").write_text("\n".join(names) + "\n")
    np.savetxt(run / "confusion.csv", conf, fmt="%d", delimiter=",")
    acc = {n: float(conf[i, i] / conf[i].sum() * 100) for i, n in enumerate(names)}
    (run / "per_class.json").write_text(json.dumps(acc))
    page = write_report(run).read_text()
    top = page[page.index("Top confusions") : page.index("confusion matrix")]
    assert top.count("<tr>") == 21  # header + the 20 largest
    assert "<td>action_003</td><td>action_007</td>" in top.split("</tr>")[1]
    worst = min(acc, key=acc.get)
    assert "the 25 worst of 174 classes" in page and "all 174 classes" in page
    assert page.index(worst) < page.index("all 174 classes")
