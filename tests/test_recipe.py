"""The reference's recipe: its parser's defaults, the seed scripts, and where each value lands.

The table below is written from the reference ``run_class_apt.py``'s argument parser, not
from aptune's: a flag not passed must mean what it means there, through ``aptune train``
and ``run_class_apt.py`` alike.
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import aptune.engine
from aptune.cli import main, reference_main
from aptune.cli.train import parse_train_args
from aptune.config import ConfigError, save_config
from aptune.engine import builders as T
from aptune.engine.distributed import DistInfo
from aptune.engine.loop import Precision

REPO = Path(__file__).resolve().parents[1]

#: the reference run_class_apt.py parser's defaults (flag -> value when not passed)
REFERENCE_DEFAULTS = {
    "opt": "sgd", "lr": 0.1, "momentum": 0.9, "opt_eps": 1e-8, "opt_betas": None,
    "weight_decay": 1e-3, "weight_decay_end": None, "layer_decay": 1.0, "clip_grad": None,
    "min_lr": 1e-6, "warmup_epochs": 10, "warmup_steps": -1, "epochs": 100, "update_freq": 1,
    "batch_size": 16, "batch_size_val": 14, "num_sample": 2, "smoothing": 0.1,
    "mixup": 0.0, "cutmix": 0.0, "cutmix_minmax": None, "mixup_prob": 0.0,
    "mixup_switch_prob": 0.0, "mixup_mode": "batch", "reprob": 0.0, "remode": "pixel",
    "recount": 1, "resplit": False, "is_aa": False, "aa": "rand-m7-n4-mstd0.5-inc1",
    "color_jitter": 0.4, "train_interpolation": "bicubic", "drop": 0.0, "attn_drop_rate": 0.0,
    "drop_path": 0.0, "fc_drop_rate": 0.0, "init_scale": 0.001, "use_mean_pooling": True,
    "model_ema": False, "model_ema_decay": 0.9999, "use_checkpoint": False,
    "model": "vit_base_patch16_224", "transfer_type": "prompt", "prompt_num_tokens": 5,
    "prompt_start": None, "prompt_end": None, "prompt_dropout": 0.0, "prompt_reparam": False,
    "nb_classes": 400, "data_set": "Kinetics-400", "num_frames": 16, "sampling_rate": 4,
    "tubelet_size": 2, "input_size": 224, "short_side_size": 224, "num_segments": 1,
    "test_num_segment": 5, "test_num_crop": 3, "model_key": "model|module", "model_prefix": "",
    "save_ckpt": True, "save_ckpt_freq": 10, "auto_resume": True, "dist_eval": False,
    "pin_mem": True, "num_workers": 10, "seed": 0, "imagenet_default_mean_and_std": True,
    "crop_pct": None, "enable_deepspeed": False, "finetune": "", "resume": "", "eval": False,
}  # fmt: skip


def _parsed_through(entry, argv: list[str], monkeypatch) -> object:
    """The resolved flags that ``entry`` hands to the training engine."""
    seen = {}
    monkeypatch.setattr(aptune.engine, "train", lambda args: seen.setdefault("args", args))
    assert entry(argv) == 0
    return seen["args"]


@pytest.mark.parametrize("entry", ["aptune train", "run_class_apt.py"])
def test_a_flag_not_passed_means_the_reference_default(entry, monkeypatch):
    call = (lambda a: main(["train", *a])) if entry == "aptune train" else reference_main
    cfg = _parsed_through(call, ["--output_dir", "o"], monkeypatch)
    values = cfg.to_dict()
    got = {k: values[k] for k in REFERENCE_DEFAULTS}
    assert got == REFERENCE_DEFAULTS
    assert values["recipe"] == "reference" and values["warmup_lr"] is None  # warmup from 0


def seed_commands() -> list[tuple[str, list[str]]]:
    """Every ``scripts/*/*/finetune.sh``: its run_class_apt.py flags, variables filled in."""
    out = []
    for path in sorted(REPO.glob("scripts/*/*/finetune.sh")):
        text = path.read_text().replace("\\\n", " ")
        line = next(ln for ln in text.splitlines() if "run_class_apt.py" in ln)
        flags = line.split("run_class_apt.py", 1)[1].replace('"$@"', "")
        flags = re.sub(r"\$\{(\w+)\}", lambda m: f"/x/{m.group(1).lower()}", flags)
        out.append((str(path.relative_to(REPO)), shlex.split(flags)))
    return out


SEEDS = seed_commands()


def test_every_seed_script_is_parsed():
    assert len(SEEDS) == 6 and all("--enable_deepspeed" in argv for _, argv in SEEDS)


def _tiny(argv: list[str]) -> list[str]:
    """The seed's flags on a nano ViT without a checkpoint file, so the parts can be built."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in ("--model", "--finetune", "--prompt_end", "--num_frames", "--input_size"):
            skip = True
            continue
        out.append(a)
    return out + ["--model", "vit_nano", "--prompt_end", "1", "--num_frames", "4",
                  "--input_size", "32"]  # fmt: skip


@pytest.mark.parametrize("script, argv", SEEDS, ids=[s for s, _ in SEEDS])
def test_seed_script_trains_the_reference_recipe(script, argv):
    args = parse_train_args(_tiny(argv))
    info = DistInfo(device=torch.device("cpu"))
    model = T.build_run_model(args, info)
    # the model: no stochastic depth, no dropout but the prompts'
    assert all(b.drop_path.p == 0.0 for b in model.blocks)
    drops = {n: m.p for n, m in model.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert drops == {"kv_prompts.dropout": 0.1}
    assert all(b.attn.attn_drop == 0.0 for b in model.blocks)
    # the augmentation: RandAugment as given, no random erasing
    data = T.data_config(args)
    assert (data.reprob, data.is_aa, data.aa) == (0.0, True, "rand-m4-n2-mstd0.2-inc1")
    # the loss: label-smoothed cross-entropy, no mixup
    ts = T.build_train_step(args, model, model, info, steps=10)
    o = args.optim
    assert ts.mixup is None
    logits, labels = torch.randn(3, args.data.nb_classes), torch.tensor([0, 1, 2])
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    torch.testing.assert_close(ts.criterion(logits, labels), expected)
    # the optimiser: AdamW, wd 1e-5 on every >= 2-D tensor (prompt_scale too), warmup from 0
    assert isinstance(ts.optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for g in ts.optimizer.param_groups if g["weight_decay"] > 0
             for p in g["params"]}  # fmt: skip
    assert decay == {"kv_prompts.prompt_embeddings_k", "kv_prompts.prompt_embeddings_v",
                     "kv_prompts.prompt_scale", "head.weight"}  # fmt: skip
    assert {g["weight_decay"] for g in ts.optimizer.param_groups} == {0.0, 1e-5}
    peak = o.lr * o.batch_size / 256  # per 256 samples, one process
    assert ts.lr_values[0] == 0.0 and ts.lr_values[10 * 10 - 1] == pytest.approx(peak)
    assert ts.clip_grad is None


def test_deepspeed_on_a_gpu_trains_in_fp16_with_the_reference_loss_scale(monkeypatch):
    args = parse_train_args(["--enable_deepspeed"])
    precision = T.run_precision(args, torch.device("cuda", 0))
    assert (precision.name, precision.device_type) == ("fp16", "cuda")
    made = {}
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *a, **kw: made.update(kw) or "scaler")
    assert T.build_scaler(precision, deepspeed=True) == "scaler"
    assert made == {"init_scale": 128.0, "growth_interval": 128}
    # on a CPU nothing changes; an explicit --precision wins
    assert T.run_precision(args, torch.device("cpu")).name == "fp32"
    bf16 = parse_train_args(["--enable_deepspeed", "--precision", "bf16"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert T.run_precision(bf16, torch.device("cuda", 0)).name == "bf16"  # an Ampere card
    assert T.build_scaler(Precision("bf16", "cuda"), deepspeed=True) is None


def test_recipe_preset_sets_values_that_config_and_flags_override(tmp_path):
    v = parse_train_args(["--recipe", "videomae-finetune"]).to_dict()
    assert (v["mixup"], v["cutmix"], v["reprob"], v["drop_path"]) == (0.8, 1.0, 0.25, 0.1)
    assert (v["opt"], v["lr"], v["layer_decay"], v["warmup_lr"]) == ("adamw", 1e-3, 0.75, 1e-6)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"recipe": "videomae-finetune", "mixup": 0.2}))
    args = parse_train_args(["--config", str(cfg), "--reprob", "0.5"])
    v = args.to_dict()
    assert (v["recipe"], v["mixup"], v["reprob"], v["cutmix"]) == (
        "videomae-finetune", 0.2, 0.5, 1.0)  # fmt: skip
    saved = yaml.safe_load(save_config(args, tmp_path / "out").read_text())
    assert saved["recipe"] == "videomae-finetune" and saved["mixup"] == 0.2
    # a saved config.yaml reproduces the run
    again = parse_train_args(["--config", str(tmp_path / "out" / "config.yaml")])
    assert again.to_dict() == args.to_dict()
    cfg.write_text("recipe: fast\n")
    with pytest.raises(ConfigError, match="recipe 'fast' is not a recipe; choose one of"):
        parse_train_args(["--config", str(cfg)])


def test_explicit_warmup_lr_is_the_start_of_warmup():
    args = parse_train_args(["--warmup_lr", "0.0256", "--lr", "2.56", "--batch_size", "10"])
    model = T.build_run_model(
        parse_train_args(["--model", "vit_nano", "--num_frames", "4", "--input_size", "32"]),
        DistInfo(device=torch.device("cpu")))  # fmt: skip
    ts = T.build_train_step(args, model, model, DistInfo(device=torch.device("cpu")), steps=2)
    assert ts.lr_values[0] == pytest.approx(0.0256 * 10 / 256)
    assert ts.lr_values[19] == pytest.approx(0.1)


def test_inert_flags_are_logged_when_changed(caplog):
    from aptune.recipes import inert_flag_notes

    args = parse_train_args(["--color_jitter", "0.2", "--num_segments", "2", "--crop_pct", "0.9"])
    notes = inert_flag_notes(args.to_dict())
    assert len(notes) == 3 and notes[0].startswith("--color_jitter 0.2 has no effect")
    assert inert_flag_notes(parse_train_args([]).to_dict()) == []


def test_the_start_log_names_the_recipe_and_every_value(caplog):
    from aptune.engine.run import _log_recipe

    args = parse_train_args(["--enable_deepspeed", "--color_jitter", "0"])
    with caplog.at_level(logging.INFO, logger="aptune"):
        _log_recipe(args, DistInfo(device=torch.device("cuda", 0)))
    text = caplog.text
    assert "recipe reference: opt=sgd lr=0.1" in text and "mixup=0.0" in text
    assert "drop_path=0.0" in text and "mixup/cutmix off" in text
    assert "--color_jitter 0.0 has no effect" in text
    assert "loss scale 2^7" in text and "no clipping" in text


def test_bad_dropout_and_cutmix_box_name_the_flag():
    with pytest.raises(ConfigError, match="--drop must be in"):
        parse_train_args(["--drop", "1.5"])
    with pytest.raises(ConfigError, match="--cutmix_minmax needs two fractions"):
        parse_train_args(["--cutmix_minmax", "0.8", "0.2"])


def test_cutmix_minmax_draws_the_box_within_its_range_and_switches_cutmix_on():
    import numpy as np

    from aptune.engine.mixup import VideoMixup

    mix = VideoMixup(0.0, 0.0, prob=1.0, switch_prob=0.0, label_smoothing=0.0, num_classes=2,
                     rng=np.random.default_rng(0), cutmix_minmax=(0.25, 0.5))  # fmt: skip
    assert mix.cutmix_alpha == 1.0
    a, b = torch.zeros(1, 3, 2, 32, 32), torch.ones(1, 3, 2, 32, 32)
    for _ in range(20):
        out, target = mix(torch.cat([a, b]), torch.tensor([0, 1]))
        pasted = out[0, 0, 0] == 1  # clip 0 got clip 1's box, on every frame alike
        assert torch.equal(out[0, :, 1] == 1, pasted.expand(3, 32, 32))
        rows, cols = pasted.any(1).sum().item(), pasted.any(0).sum().item()
        assert 8 <= rows < 16 and 8 <= cols < 16 and pasted.sum().item() == rows * cols
        assert target[0, 1].item() == pytest.approx(rows * cols / 1024)


def test_use_checkpoint_flag_reaches_the_model():
    tiny = ["--model", "vit_nano", "--num_frames", "4", "--input_size", "32"]
    info = DistInfo(device=torch.device("cpu"))
    assert T.build_run_model(parse_train_args([*tiny, "--use_checkpoint"]), info).grad_checkpointing
    assert not T.build_run_model(parse_train_args(tiny), info).grad_checkpointing
