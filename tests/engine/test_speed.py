"""engine.speed: frozen weights in the compute dtype, the attention choice, torch.compile."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

import aptune
from aptune.config import RunConfig
from aptune.engine import speed
from aptune.engine.distributed import DistInfo, unwrap
from aptune.engine.loop import Precision
from aptune.engine.weights import model_tensors
from aptune.models.vit import VisionTransformer

BF16 = Precision("bf16", "cpu")
FRAMES, SIZE = 4, 32
N_TOKENS = (FRAMES // 2) * (SIZE // 16) ** 2  # 8 data tokens


def tiny(transfer_type: str = "prompt", seed: int = 0, **kw) -> torch.nn.Module:
    """Nano ViT (dim 64, depth 2, 2 heads) with every tensor random, so q/v biases and
    LayerNorms are not the identity their init would be."""
    torch.manual_seed(seed)
    model = aptune.build_model(
        "vit_nano", num_classes=5, transfer_type=transfer_type, num_frames=FRAMES,
        input_size=SIZE, **kw,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def clips(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def run_args(**kw) -> RunConfig:
    base = dict(attn_impl="auto", batch_size=2, batch_size_val=None, num_frames=FRAMES)
    base.update(input_size=SIZE, compile=False)
    base.update(kw)
    return RunConfig.from_values(base)


def impls(model: torch.nn.Module) -> set[str]:
    return {blk.attn.attn_impl for blk in unwrap(model).blocks}


# -- the choice -------------------------------------------------------------------------------
ROOMY = 1 << 40  # bytes: plain's scores always fit


@pytest.mark.parametrize(
    "device,dtype,train,transfer_type,expected",
    [
        ("cuda", torch.float16, True, "prompt", "sdpa"),  # --precision auto on a GPU
        ("cuda", torch.bfloat16, True, "end2end", "sdpa"),
        ("cuda", torch.float32, True, "prompt", "sdpa"),
        ("cpu", torch.float32, True, "prompt", "sdpa"),  # --precision auto on a CPU
        ("cpu", torch.bfloat16, True, "prompt", "plain"),
        ("cpu", torch.float16, True, "lora", "plain"),
        ("cpu", torch.bfloat16, False, "prompt", "plain"),  # evaluation: forward only
        ("cpu", torch.bfloat16, True, "linear", "plain"),  # linear probing: forwards only
        ("cpu", torch.float32, False, "linear", "sdpa"),
    ],
)
def test_auto_rule(device, dtype, train, transfer_type, expected):
    choice = speed.choose_attn_impl(tiny(transfer_type), "auto", 2, dtype, train, ROOMY, device)
    assert choice.impl == expected
    assert choice.log_line().startswith(f"attention auto: {expected} (")


def test_auto_on_cuda_picks_sdpa_whatever_the_memory():
    """The CPU kernels are not candidates on a GPU, not even where plain's scores fit."""
    for available in (None, 1, ROOMY):
        choice = speed.choose_attn_impl(tiny(), "auto", 2, torch.float16, True, available, "cuda")
        assert choice.impl == "sdpa" and "cuda" in choice.reason


def test_cpu_training_takes_the_lean_kernel_where_plain_does_not_fit(monkeypatch):
    model = tiny()
    need = speed.plain_score_bytes(model, 2, torch.bfloat16, train=True)
    fits = int(need / speed.MEMORY_SHARE) + 1

    def pick(available: int | None) -> str:
        return speed.choose_attn_impl(model, "auto", 2, torch.bfloat16, True, available).impl

    assert pick(fits) == "plain"
    assert pick(fits - 2) == "recompute" and pick(None) == "recompute"  # unknown: lean
    line = speed.choose_attn_impl(model, "auto", 2, torch.bfloat16, True, need).log_line()
    assert "GiB available: too big" in line
    for train, transfer_type in ((False, "prompt"), (True, "linear")):  # no backward to run
        forward_only = speed.choose_attn_impl(
            tiny(transfer_type), "auto", 2, torch.bfloat16, train, None
        )
        assert forward_only.impl == "sdpa"
    monkeypatch.setattr(speed, "recompute_supported", lambda: False)  # a torch without its op
    assert pick(None) == "sdpa" and pick(fits) == "plain"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", ["sdpa", "plain", "recompute"])
def test_explicit_impl_is_kept_on_every_device(impl, device):
    choice = speed.choose_attn_impl(tiny(), impl, 2, torch.float16, True, 1, device)
    assert choice.impl == impl
    assert choice.log_line() == f"attention {impl}: {impl} (--attn_impl {impl})"
    with pytest.raises(ValueError, match="--attn_impl"):
        speed.choose_attn_impl(tiny(), "flash", 2, torch.float32, True, ROOMY, device)


def test_plain_score_bytes_in_closed_form():
    h, n, m, depth = 2, N_TOKENS, 2, 2
    apt = tiny("prompt", prompt_num_tokens=m)
    per_block_bf16 = 3 * h * n * (n + m) * 2
    # training keeps one score tensor in each of the 2 blocks with grad, plus 2 in flight
    assert speed.plain_score_bytes(apt, 3, torch.bfloat16, True) == per_block_bf16 * (depth + 2)
    assert speed.plain_score_bytes(apt, 3, torch.float32, False) == 2 * per_block_bf16 * 2
    late = tiny("prompt", prompt_num_tokens=m, prompt_start=1)  # block 0 runs without grad
    assert speed.plain_score_bytes(late, 3, torch.bfloat16, True) == per_block_bf16 * 3
    linear = tiny("linear")  # head only: no block keeps scores
    assert speed.plain_score_bytes(linear, 3, torch.float32, True) == 3 * h * n * n * 4 * 2


def test_plain_score_bytes_covers_what_autograd_keeps():
    """The estimate is at least the score-shaped tensors plain attention saves for backward."""
    model = tiny("prompt", prompt_num_tokens=2)
    model.set_attn_impl("plain")
    x, kept = clips(3), {}
    score_shape = (3, 2, N_TOKENS, N_TOKENS + 2)

    def pack(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape) == score_shape:
            kept[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), BF16.autocast():
        model(x)
    assert len(kept) == model.depth  # one per block: the softmax output
    estimate = speed.plain_score_bytes(model, 3, torch.bfloat16, True)
    assert sum(kept.values()) <= estimate <= 2 * sum(kept.values())


def test_available_memory_is_positive_on_this_machine():
    free = speed.available_memory(torch.device("cpu"))
    assert free is None or free > 0


# -- frozen weights in the compute dtype --------------------------------------------------------
def test_frozen_cast_keeps_trainable_fp32_and_the_optimizer_state_fp32():
    model = tiny("prompt", prompt_reparam=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    count = speed.cast_frozen_weights(model, torch.bfloat16)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert count > 0 and all(dtypes[n] == torch.float32 for n in trainable)
    assert dtypes["blocks.0.attn.qkv.weight"] == torch.bfloat16
    assert dtypes["blocks.0.attn.q_bias"] == torch.bfloat16
    assert dtypes["patch_embed.proj.weight"] == torch.bfloat16
    assert dtypes["blocks.0.norm1.weight"] == torch.float32  # LayerNorms stay fp32
    named = dict(model.named_parameters())
    frozen_before = {n: p.detach().clone() for n, p in named.items() if n not in trainable}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        with BF16.autocast():
            loss = model(clips()).float().logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    for state in opt.state.values():
        assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters()
               if n not in trainable)  # fmt: skip
    assert {t.dtype for t in model_tensors(model, trainable_only=True).values()} == {torch.float32}


@pytest.mark.parametrize("method", ["prompt", "lora", "adapter", "bitfit", "linear"])
def test_frozen_cast_gives_the_fp32_weights_result_under_autocast(method):
    """Only tensors autocast casts to bf16 anyway are converted, so logits and gradients
    are the fp32-weights run's bit for bit (LayerNorms, which autocast leaves in fp32 on
    CPU, keep their fp32 weights)."""
    ref = tiny(method, **({"prompt_reparam": True} if method == "prompt" else {}))
    cast = copy.deepcopy(ref)
    assert speed.cast_frozen_weights(cast, torch.bfloat16) > 0
    x = clips()
    outs, grads = [], []
    for model in (ref, cast):
        with BF16.autocast():
            out = model(x)
        out.float().square().mean().backward()
        outs.append(out)
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=0, atol=0, msg=name)


def test_full_finetuning_is_unchanged():
    model = tiny("end2end")
    assert speed.cast_frozen_weights(model, torch.bfloat16) == 0
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_bitfit_keeps_its_trainable_biases_fp32():
    model = tiny("bitfit")
    speed.cast_frozen_weights(model, torch.bfloat16)
    attn = model.blocks[0].attn
    assert attn.qkv.weight.dtype == torch.bfloat16
    assert attn.proj.bias.requires_grad and attn.proj.bias.dtype == torch.float32
    with BF16.autocast():
        model(clips()).float().sum().backward()
    assert attn.proj.bias.grad is not None and attn.proj.bias.grad.dtype == torch.float32


# -- the entry point ------------------------------------------------------------------------------
def _no_steps(monkeypatch) -> None:
    """The choice is a rule: no forward may run (it would spend steps and RNG draws)."""
    monkeypatch.setattr(
        VisionTransformer, "forward", lambda *a, **k: pytest.fail("the model ran a step")
    )


def test_prepare_decides_without_running_the_model(caplog, monkeypatch):
    _no_steps(monkeypatch)
    model = tiny("prompt", prompt_dropout=0.5)
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    with caplog.at_level(logging.INFO, logger="aptune"):
        out = speed.prepare_model_for_speed(model, run_args(), DistInfo(), BF16)
    assert torch.equal(torch.rand(4), expected_next)  # the run's RNG stream is untouched
    assert out is model and impls(model) == {"plain"}  # bf16 CPU training, scores fit
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("attention")]
    assert len(lines) == 1 and "attention auto: plain (CPU, bfloat16; plain's scores" in lines[0]
    assert model.blocks[1].mlp.fc1.weight.dtype == torch.bfloat16


def test_prepare_on_a_gpu_takes_sdpa_without_touching_the_gpu(monkeypatch):
    """``--precision auto`` is fp16 on CUDA: the run's kernel is SDPA, decided without a
    step and without asking the device for its free memory."""
    _no_steps(monkeypatch)
    monkeypatch.setattr(speed, "available_memory", lambda d: pytest.fail("asked for memory"))
    cuda = DistInfo(device=torch.device("cuda"))
    for transfer_type in ("prompt", "end2end", "lora"):
        model = tiny(transfer_type)
        speed.prepare_model_for_speed(model, run_args(), cuda, Precision("fp16", "cuda"))
        assert impls(model) == {"sdpa"}
    model = tiny("prompt")  # the CPU kernels only when asked
    speed.prepare_model_for_speed(model, run_args(attn_impl="plain"), cuda, Precision("fp16"))
    assert impls(model) == {"plain"}


def test_prepare_eval_follows_the_rule_and_explicit_flag_wins(caplog):
    model = tiny("prompt")
    with caplog.at_level(logging.INFO, logger="aptune"):
        speed.prepare_model_for_speed(model, run_args(), DistInfo(), BF16, train=False)
    assert impls(model) == {"plain"}
    assert any("attention auto: plain (CPU, bfloat16" in r.getMessage() for r in caplog.records)
    model = tiny("prompt")
    speed.prepare_model_for_speed(model, run_args(), DistInfo(), Precision("fp32"), train=False)
    assert impls(model) == {"sdpa"}
    assert model.head.weight.dtype == torch.float32  # fp32 run: nothing is cast
    model = tiny("linear")
    speed.prepare_model_for_speed(model, run_args(attn_impl="recompute"), DistInfo(), BF16)
    assert impls(model) == {"recompute"}


def test_sample_shape_from_flags():
    assert speed.sample_shape(run_args(num_sample=1), True) == (2, 3, FRAMES, SIZE, SIZE)
    assert speed.sample_shape(run_args(num_sample=2), True)[0] == 4  # rows of a step
    assert speed.sample_shape(run_args(batch_size_val=6), False)[0] == 6
    assert speed.sample_shape(run_args(), False)[0] == 2


# -- torch.compile ---------------------------------------------------------------------------------
_ENV_ERRORS = ("compiler", "gcc", "cc1", "c++", "Python.h", "cpp", "triton")


@pytest.mark.slow
def test_compile_gives_equal_outputs_and_unwraps():
    """Inference forward only: compiling the backward graph too costs ~4x the time (cold
    cache, 2 shared cores); benchmarks/bench_train_step.py times the compiled train step."""
    model = tiny("prompt").eval()
    ref = copy.deepcopy(model)
    compiled = speed.prepare_model_for_speed(
        model, run_args(attn_impl="sdpa", compile=True), DistInfo(), Precision("fp32")
    )
    assert unwrap(compiled) is model and compiled is not model
    x = clips()
    try:
        with torch.no_grad():
            out = compiled(x)
    except Exception as e:  # inductor needs a working C compiler and headers
        if any(k in str(e) for k in _ENV_ERRORS):
            pytest.skip(f"torch.compile unavailable here: {str(e).splitlines()[0][:200]}")
        raise
    with torch.no_grad():
        expected = ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_auto_choice_is_recorded_and_a_restart_keeps_it(tmp_path, monkeypatch, caplog):
    """A resumed run must keep its kernel (they agree only to rounding): the first start
    writes attention.json, a restart reads it even where the free memory now says
    otherwise."""
    monkeypatch.setattr(speed, "available_memory", lambda device: ROOMY)
    model = tiny("prompt")
    speed.prepare_model_for_speed(model, run_args(), DistInfo(), BF16, run_dir=tmp_path)
    assert impls(model) == {"plain"}
    assert (tmp_path / "attention.json").read_text().strip() == '{"attn_impl": "plain"}'

    monkeypatch.setattr(speed, "available_memory", lambda device: 1)  # plain no longer fits
    model = tiny("prompt")
    with caplog.at_level(logging.INFO, logger="aptune"):
        speed.prepare_model_for_speed(model, run_args(), DistInfo(), BF16, run_dir=tmp_path)
    assert impls(model) == {"plain"}
    assert any("kept from" in r.getMessage() for r in caplog.records)
    model = tiny("prompt")  # without the record: the lean kernel
    speed.prepare_model_for_speed(model, run_args(), DistInfo(), BF16)
    assert impls(model) == {"recompute"}
    # an explicit flag still wins over the record
    model = tiny("prompt")
    speed.prepare_model_for_speed(
        model, run_args(attn_impl="sdpa"), DistInfo(), BF16, run_dir=tmp_path
    )
    assert impls(model) == {"sdpa"}
