"""``--precision auto`` per card: bf16 on 8.0+, fp16 with a loss scaler below, fp32 on CPU.

There is no GPU here: the card is simulated by patching the capability query, which is all
the choice reads (nothing runs on the "GPU").
"""

from __future__ import annotations

import pytest
import torch

from aptune.build import build_model
from aptune.config import ConfigError, RunConfig
from aptune.engine import precision as P
from aptune.engine.builders import build_scaler, build_train_step, run_precision
from aptune.engine.distributed import DistInfo

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")
#: card -> compute capability -> what auto trains in
CARDS = [
    ("H100", (9, 0), "bf16"),
    ("L4", (8, 9), "bf16"),
    ("RTX 3090", (8, 6), "bf16"),
    ("A100", (8, 0), "bf16"),
    ("T4", (7, 5), "fp16"),
    ("V100", (7, 0), "fp16"),
    ("P100", (6, 0), "fp16"),
]


@pytest.fixture
def card(monkeypatch):
    """``card("V100", (7, 0))``: what torch.cuda reports from now on."""

    def use(name: str, cap: tuple[int, int]) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: cap)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Tesla {name}")

    return use


@pytest.fixture(autouse=True)
def tf32_restored():
    """Whatever a test turns on, the process's TF32 settings are put back afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def config(**values) -> RunConfig:
    return RunConfig.from_values({"model": "vit_nano", "nb_classes": 4, **values})


@pytest.mark.parametrize("name, cap, expected", CARDS)
def test_auto_follows_the_card(card, name, cap, expected):
    card(name, cap)
    chosen = run_precision(config(), CUDA)
    assert chosen.name == expected and chosen.device_type == "cuda"
    scaler = build_scaler(chosen, deepspeed=False)
    assert (scaler is not None) == (expected == "fp16")  # bf16 needs no loss scaler
    assert P.inference_precision(CUDA).name == expected  # predict / extract / timeline


def test_cpu_is_fp32_unless_bf16_is_asked():
    assert run_precision(config(), CPU).name == "fp32"
    assert run_precision(config(bf16=True), CPU).name == "bf16"
    assert P.inference_precision(CPU).name == "fp32"
    assert P.inference_precision(CPU, bf16=True).name == "bf16"
    with pytest.raises(ConfigError, match="--precision fp16 needs a CUDA device"):
        run_precision(config(precision="fp16"), CPU)


@pytest.mark.parametrize("values", [{"bf16": True}, {"precision": "bf16"}])
def test_bf16_on_a_card_without_it_is_a_one_line_error(card, values):
    card("V100", (7, 0))
    with pytest.raises(ConfigError) as e:
        run_precision(config(**values), CUDA)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--bf16 / --precision bf16: Tesla V100")
    assert "compute capability 7.0" in msg and "--precision auto" in msg
    with pytest.raises(ConfigError, match="no native bf16"):
        P.inference_precision(CUDA, bf16=True)  # predict --bf16 on the same card


def test_bf16_is_accepted_on_an_ampere_card(card):
    card("A100", (8, 0))
    assert run_precision(config(bf16=True), CUDA).name == "bf16"
    assert run_precision(config(precision="fp16"), CUDA).name == "fp16"  # asked: honoured


def test_fp32_on_a_gpu_allows_tf32(card):
    card("A100", (8, 0))
    assert not torch.backends.cuda.matmul.allow_tf32
    assert run_precision(config(precision="fp32"), CUDA).name == "fp32"
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_cpu_fp32_leaves_tf32_alone(card):
    run_precision(config(precision="fp32"), CPU)
    assert not torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("cap", [(9, 0), (7, 0)])
def test_enable_deepspeed_keeps_the_references_fp16_on_every_card(card, cap):
    card("any", cap)
    chosen = run_precision(config(enable_deepspeed=True), CUDA)
    assert chosen.name == "fp16"
    scaler = build_scaler(chosen, deepspeed=True)
    assert scaler.get_scale() == 2.0**7 and scaler.get_growth_interval() == 128
    # an explicit --precision wins over the DeepSpeed recipe
    assert run_precision(config(enable_deepspeed=True, precision="fp32"), CUDA).name == "fp32"


@pytest.mark.parametrize("cap, fused", [((7, 0), True), ((8, 0), False)])
def test_the_loss_scaler_gets_a_fused_optimiser(card, cap, fused):
    """fp16's scaler skips an inf/NaN step on the device only with a fused optimiser
    (otherwise ``GradScaler.step`` reads its flag on the host every step)."""
    card("any", cap)
    model = build_model("vit_nano", num_classes=4, transfer_type="prompt", num_frames=8,
                        input_size=32, prompt_num_tokens=2)  # fmt: skip
    cfg = config(num_frames=8, input_size=32, opt="adamw", epochs=1)
    ts = build_train_step(cfg, model, model, DistInfo(device=CUDA), steps=2)
    assert (ts.scaler is not None) == fused
    assert bool(ts.optimizer.defaults["fused"]) == fused
    assert ts.precision.name == ("fp16" if fused else "bf16")


def test_unknown_precision_names_the_flag():
    with pytest.raises(ConfigError, match="--precision 'fp8'"):
        P.resolve_precision("fp8", CPU)


@pytest.mark.parametrize("name, cap, expected", [("T4", (7, 5), "fp16"), ("H100", (9, 0), "bf16")])
def test_predict_uses_trainings_rule(card, name, cap, expected):
    from types import SimpleNamespace

    from aptune.commands.predict import precision_for

    card(name, cap)
    trained = SimpleNamespace(device=CUDA)
    assert precision_for(trained, bf16=False).name == expected
    assert precision_for(SimpleNamespace(device=CPU), bf16=False).name == "fp32"
