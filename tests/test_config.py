"""Reference flags, YAML config files and the launchers' local-rank spellings."""

from __future__ import annotations

import pytest
import yaml

from aptune.config import ConfigError, build_train_parser, parse_args, save_config


def parse(argv):
    return parse_args(argv, build_train_parser())


@pytest.mark.parametrize("argv", [["--local-rank=1"], ["--local_rank", "1"], ["--local-rank", "1"]])
def test_every_local_rank_spelling(argv):
    assert parse(argv).local_rank == 1


def test_switches_and_their_negations():
    a = parse([])  # every default against the reference's: tests/test_recipe.py
    assert a.auto_resume and a.pin_mem and a.save_ckpt
    b = parse(["--no_auto_resume", "--no_pin_mem", "--opt_betas", "0.9", "0.999"])
    assert not b.auto_resume and not b.pin_mem and b.opt_betas == [0.9, 0.999]


def test_yaml_sets_defaults_and_flags_override(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"lr": 0.05, "prompt_num_tokens": 400, "data_set": "SSV2"}))
    a = parse(["--config", str(cfg), "--lr", "0.01"])
    assert (a.lr, a.prompt_num_tokens, a.data_set) == (0.01, 400, "SSV2")
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


def test_every_method_option_is_a_train_flag_that_reaches_the_method():
    import dataclasses

    from aptune.config import method_options
    from aptune.tuning import METHODS

    dests = {a.dest for a in build_train_parser()._actions}
    for cfg in METHODS.values():
        for f in dataclasses.fields(cfg):
            if cfg.flag_prefix():
                assert cfg.flag_prefix() + f.name in dests, (cfg.name, f.name)
    args = parse(["--transfer_type", "adapter+lora", "--adapter_layers", "0-1", "--lora_rank", "2"])
    assert method_options(args) | {"adapter_layers": "0-1", "lora_rank": 2} == method_options(args)
