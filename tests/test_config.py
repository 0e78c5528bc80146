"""The typed run configuration: flags, YAML files, sections, the launchers' local-rank spellings."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

import aptune
from aptune.cli.train import build_train_parser, parse_train_args
from aptune.config import SECTIONS, ConfigError, RunConfig, save_config
from aptune.engine import builders as T
from aptune.engine.distributed import DistInfo


def parse(argv):
    return parse_train_args(argv)


@pytest.mark.parametrize("argv", [["--local-rank=1"], ["--local_rank", "1"], ["--local-rank", "1"]])
def test_every_local_rank_spelling(argv):
    assert parse(argv).job.local_rank == 1


def test_switches_and_their_negations():
    a = parse([])  # every default against the reference's: tests/test_recipe.py
    assert a.job.auto_resume and a.data.pin_mem and a.job.save_ckpt
    b = parse(["--no_auto_resume", "--no_pin_mem", "--opt_betas", "0.9", "0.999"])
    assert not b.job.auto_resume and not b.data.pin_mem and b.optim.opt_betas == [0.9, 0.999]


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"lr": 0.05, "prompt_num_tokens": 400, "data_set": "SSV2"}))
    a = parse(["--config", str(cfg), "--lr", "0.01"])
    assert (a.optim.lr, a.methods["prompt_num_tokens"], a.data.data_set) == (0.01, 400, "SSV2")
    saved = yaml.safe_load(save_config(a, tmp_path / "out").read_text())
    assert saved["lr"] == 0.01 and saved["prompt_num_tokens"] == 400 and "config" not in saved


@pytest.mark.parametrize(
    "content, message",
    [("lr: [1, 2", "not valid YAML"), ("learning_rate: 1", "unknown keys learning_rate"),
     ("- 1\n- 2", "expected a mapping")],
)  # fmt: skip
def test_bad_yaml_names_the_file(tmp_path, content, message):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=message) as err:
        parse(["--config", str(cfg)])
    assert str(cfg) in str(err.value)


def test_bad_values_name_the_flag():
    with pytest.raises(ConfigError, match="--input_size 200 must be a multiple of 16"):
        parse(["--input_size", "200"])
    with pytest.raises(SystemExit):
        parse(["--data_set", "KINETICS"])
    with pytest.raises(ConfigError, match="--batch_size must be >= 1, got 0"):
        RunConfig.from_values({"batch_size": 0})


def test_every_method_option_is_a_train_flag_that_reaches_the_method():
    from aptune.tuning import METHODS

    dests = {a.dest for a in build_train_parser()._actions}
    for cfg in METHODS.values():
        for f in dataclasses.fields(cfg):
            if cfg.flag_prefix():
                assert cfg.flag_prefix() + f.name in dests, (cfg.name, f.name)
    args = parse(["--transfer_type", "adapter+lora", "--adapter_layers", "0-1", "--lora_rank", "2"])
    options = args.method_options()
    assert (options["adapter_layers"], options["lora_rank"]) == ("0-1", 2)
    model = T.build_run_model(args.replace(model="vit_nano", num_frames=4, input_size=32),
                              DistInfo())  # fmt: skip
    assert all(m.lora_A.shape[0] == 2 for m in model.blocks[0].attn.qkv_delta.lora.values())


def test_python_users_build_a_config_without_a_command_line(tmp_path):
    cfg = RunConfig.from_values({"optim": {"lr": 0.5}, "nb_classes": 3, "lora_rank": 4})
    assert (cfg.optim.lr, cfg.data.nb_classes, cfg.methods["lora_rank"]) == (0.5, 3, 4)
    assert cfg.optim.opt == "sgd"  # the rest: the reference's defaults
    assert aptune.RunConfig is RunConfig and callable(aptune.train)
    with pytest.raises(ConfigError, match="unknown keys learning_rate"):
        RunConfig.from_values({"learning_rate": 1})
    with pytest.raises(ValueError, match="lora_rank must be int"):
        RunConfig.from_values({"lora_rank": "four"})
    with pytest.raises(ConfigError, match="--lr must be float, got 'abc'"):
        RunConfig.from_values({"lr": "abc"})
    with pytest.raises(ConfigError, match="--batch_size must be int, got 2.5"):
        RunConfig.from_values({"batch_size": 2.5})
    assert RunConfig.from_values({"eval_data_path": None, "lr": 1}).optim.lr == 1.0


def test_yaml_round_trip_is_exact_and_sectioned_files_load(tmp_path):
    cfg = parse(["--lr", "0.05", "--crop_scale", "0.5", "1", "--lora_rank", "8", "--bf16"])
    again = RunConfig.from_yaml(cfg.to_yaml(tmp_path / "c.yaml"))
    assert again.to_dict() == cfg.to_dict() and again.optim.precision == "bf16"
    (tmp_path / "s.yaml").write_text("optim:\n  lr: 2\nmodel:\n  model: vit_small\n")
    sectioned = RunConfig.from_yaml(tmp_path / "s.yaml")
    assert sectioned.optim.lr == 2.0 and isinstance(sectioned.optim.lr, float)
    assert sectioned.model.model == "vit_small"
    assert cfg.replace(lr=0.2).optim.lr == 0.2 and cfg.optim.lr == 0.05


def test_a_config_yaml_written_before_the_typed_config_still_loads(tmp_path):
    """A run folder's config.yaml of the argparse era: every flag, flat, sorted."""
    old = {k: v for k, v in RunConfig().to_dict().items() if k != "recipe"}
    old.update(batch_size=64, lr=1e-3, opt="adamw", mixup=0.8, drop_path=0.1, warmup_lr=1e-6,
               prompt_start=0, prompt_num_tokens=2, vpt_num_tokens=None)  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    cfg = RunConfig.from_yaml(tmp_path / "config.yaml")
    assert (cfg.optim.batch_size, cfg.optim.opt, cfg.optim.mixup) == (64, "adamw", 0.8)
    assert cfg.methods["prompt_num_tokens"] == 2 and cfg.optim.recipe == "reference"


def test_every_option_is_in_exactly_one_section_and_has_help():
    names = [f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))
    assert all(f.metadata.get("help") for cls in SECTIONS.values() for f in dataclasses.fields(cls))


# -- V-JEPA 2: heads, evaluation presets, segment merging ------------------------------
VJ = "vjepa2_vit_nano_patch16_256"


def test_eval_preset_fills_meta_protocols_for_the_model():
    ssv2 = parse(["--model", VJ, "--eval_preset", "vjepa2-ssv2"])
    assert (ssv2.model.num_frames, ssv2.data.sampling_rate, ssv2.data.test_num_segment,
            ssv2.data.test_num_crop, ssv2.model.input_size, ssv2.data.short_side_size,
            ssv2.data.sampling) == (16, 4, 2, 3, 256, 256, "dense")  # fmt: skip
    k400 = parse(["--model", VJ, "--eval_preset", "vjepa2-k400"])
    k400_views = (k400.model.num_frames, k400.data.test_num_segment, k400.data.test_num_crop)
    assert k400_views == (16, 8, 3)
    dive = parse(["--model", "vjepa2_vit_giant_patch16_384", "--eval_preset", "vjepa2-diving48"])
    assert (dive.model.num_frames, dive.data.sampling_rate, dive.data.test_num_segment,
            dive.model.input_size, dive.data.short_side_size) == (32, 2, 4, 384, 384)  # fmt: skip
    assert parse(["--model", VJ, "--eval_preset", "vjepa2-diving48"]).model.input_size == 256
    v21 = parse(["--model", "vjepa2_1_vit_nano_patch16_384", "--eval_preset", "vjepa2-ssv2"])
    assert (v21.model.input_size, v21.data.short_side_size) == (384, 384)
    assert parse(["--model", "vit_nano", "--eval_preset", "vjepa2-k400"]).model.input_size == 256


def test_eval_preset_lies_over_the_recipe_and_under_config_and_flags(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump({"eval_preset": "vjepa2-k400", "test_num_crop": 1}))
    a = parse(["--model", VJ, "--recipe", "videomae-finetune", "--config", str(file),
               "--num_frames", "8"])  # fmt: skip
    assert a.model.num_frames == 8  # the flag
    assert a.data.test_num_crop == 1  # the file
    assert a.data.test_num_segment == 8 and a.model.input_size == 256  # the preset
    assert a.optim.opt == "adamw"  # the recipe
    saved = RunConfig.from_yaml(save_config(a, tmp_path / "out"))
    assert saved.to_dict() == a.to_dict()  # a run's config.yaml reads back unchanged


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--head", "attentive"], "--head attentive is for V-JEPA 2 models"),
        (["--head_checkpoint", "probe.pt"], "--head_checkpoint is for V-JEPA 2 models"),
        (["--model", VJ, "--head", "linear", "--head_checkpoint", "p.pt"], "--head attentive"),
        (["--model", VJ, "--cos_attn"], "--cos_attn is VideoMAE V2's"),
        (["--eval_preset", "vjepa2-ucf"], "invalid choice"),
    ],
)
def test_head_options_refuse_what_cannot_work(argv, message, capsys):
    with pytest.raises((ConfigError, SystemExit)) as err:
        parse(argv)
    text = str(err.value) if err.type is ConfigError else capsys.readouterr().err
    assert message in text and "\n" not in str(err.value)


def test_head_reaches_build_model():
    cfg = RunConfig.from_values({"model": VJ, "head": "linear", "nb_classes": 3,
                                 "num_frames": 4, "input_size": 32})  # fmt: skip
    net = T.build_run_model(cfg, DistInfo())
    assert net.head_kind == "linear" and net.pooler is None
    auto = T.build_run_model(cfg.replace(head="auto"), DistInfo())
    assert auto.head_kind == "attentive" and auto.pooler is not None
    video = RunConfig.from_values({"model": "vit_nano", "head": "linear", "nb_classes": 3,
                                   "num_frames": 4, "input_size": 32})  # fmt: skip
    assert T.build_run_model(video, DistInfo()).head.out_features == 3


def test_model_help_lists_the_vjepa2_names(capsys):
    with pytest.raises(SystemExit):
        build_train_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ("vjepa2_vit_{large,huge,giant}_patch16_256", "--segment_merge", "--eval_preset",
                 "--head_checkpoint"):  # fmt: skip
        assert flag in out.replace("\n", " ").replace("  ", ""), flag
