"""The recomputing attention kernel (``attn_impl="recompute"``): exact gradients, its
chunked and partial-gradient paths, the whole model against SDPA, and bf16 precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from aptune.models import attention_kernels as kernels
from aptune.models.attention_kernels import plain_attention, recompute_attention
from aptune.models.vit import create_vit
from aptune.tuning import apply_apt


def qkv(n: int = 6, m: int = 9, d: int = 8, dtype=torch.float64, seed: int = 0, q_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, 3, n, d, generator=g, dtype=dtype) * q_scale
    k = torch.randn(2, 3, m, d, generator=g, dtype=dtype)
    v = torch.randn(2, 3, m, d, generator=g, dtype=dtype)
    return q, k, v


def formula(q, k, v, scale):
    return ((q * scale) @ k.transpose(-2, -1)).softmax(-1) @ v


@pytest.mark.parametrize("keys_per_chunk", [None, 2, 5])
def test_gradients_equal_autograd_of_the_formula(monkeypatch, keys_per_chunk):
    """Whole heads at once and in key chunks (dQ summed over chunks, in fp64 here)."""
    if keys_per_chunk is not None:  # 6 queries: chunks of 2 keys (2,2,2,2,1), or 5 (5, 4)
        monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 6 * keys_per_chunk)
    q, k, v = (t.requires_grad_() for t in qkv())
    assert torch.autograd.gradcheck(lambda a, b, c: recompute_attention(a, b, c, 0.35), (q, k, v))
    out = recompute_attention(q, k, v, 0.35)
    ref = formula(q, k, v, 0.35)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    for a, b in zip(grads, torch.autograd.grad((ref * w).sum(), (q, k, v))):
        torch.testing.assert_close(a, b)


def test_only_the_needed_gradients_are_computed():
    """The first APT block's queries come from the frozen patch embedding: no dQ there."""
    q, k, v = qkv()
    k.requires_grad_()
    out = recompute_attention(q, k, v, 0.35)
    (dk,) = torch.autograd.grad(out.sum(), (k,))
    kk = k.detach().requires_grad_()
    (ref,) = torch.autograd.grad(formula(q, kk, v, 0.35).sum(), (kk,))
    torch.testing.assert_close(dk, ref)
    assert q.grad is None and v.grad is None


def _train_grads(model, x, impl, autocast_dtype=None):
    model.set_attn_impl(impl)
    model.zero_grad(set_to_none=True)
    low = autocast_dtype is not None
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=low):
        out = model(x)
    out.float().square().mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float(), grads


@pytest.mark.parametrize("cos_attn", [False, True])
def test_apt_model_trains_the_same_as_sdpa(cos_attn):
    """fp32: logits and every prompt/head gradient equal SDPA's to rounding (V2's cosine
    attention passes scale 1 with the logit scale folded into q)."""
    torch.manual_seed(0)
    model = apply_apt(
        create_vit("vit_nano", num_classes=5, num_frames=4, img_size=32, cos_attn=cos_attn),
        num_tokens=3,
        reparam=True,
    )
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("kv_prompts", "head", "fc_norm")))
    x = torch.randn(2, 3, 4, 32, 32)
    out_s, grads_s = _train_grads(model, x, "sdpa")
    out_r, grads_r = _train_grads(model, x, "recompute")
    torch.testing.assert_close(out_r, out_s)
    assert grads_r.keys() == grads_s.keys() and any(n.startswith("kv_prompts") for n in grads_r)
    for name in grads_s:
        torch.testing.assert_close(grads_r[name], grads_s[name], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_training_matches_sdpa_within_bf16_rounding():
    torch.manual_seed(1)
    model = apply_apt(create_vit("vit_nano", num_classes=5, num_frames=4, img_size=32), 2)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("kv_prompts", "head")))
    x = torch.randn(2, 3, 4, 32, 32)
    out_s, grads_s = _train_grads(model, x, "sdpa", torch.bfloat16)
    out_r, grads_r = _train_grads(model, x, "recompute", torch.bfloat16)
    torch.testing.assert_close(out_r, out_s, rtol=0, atol=0)  # the same fused forward
    for name in grads_s:
        a, b = grads_r[name], grads_s[name]
        assert (a - b).norm() <= 0.02 * b.norm(), name


def _relative_grad_errors(fn, q, k, v, w, ref_grads):
    q, k, v = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    out = fn(q, k, v)
    grads = torch.autograd.grad((out.float() * w).sum(), (q, k, v))
    return [float((a.double() - r).norm() / r.norm()) for a, r in zip(grads, ref_grads)]


def test_bf16_gradients_are_more_exact_than_plain_on_peaked_attention():
    """Real attention rows are peaked: the recomputed probabilities exp(s - lse) round the
    small number s - lse near each row's peak, where plain's bf16 scores round s itself."""
    scale = 64**-0.5
    q, k, v = qkv(n=256, m=258, d=64, seed=3, q_scale=4.0)  # peaked rows
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    qd, kd, vd = (t.clone().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad((formula(qd, kd, vd, scale) * w).sum(), (qd, kd, vd))
    kernels = (
        lambda a, b, c: recompute_attention(a, b, c, scale),
        lambda a, b, c: plain_attention(a, b, c, scale),
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c),
    )
    rec, pla, sdp = (_relative_grad_errors(fn, q, k, v, w, ref) for fn in kernels)
    assert max(rec) < 0.02
    for r, p, s in zip(rec, pla, sdp):
        assert r < p and r < 2 * s, (rec, pla, sdp)


def test_sdpa_itself_where_no_backward_runs_or_off_the_cpu(monkeypatch):
    """Inference and export tracing see plain SDPA (same CPU kernel as the forward here);
    CUDA's fused backward is already fast, so there the kernel is SDPA as well."""
    calls = []
    monkeypatch.setattr(kernels.RecomputeAttention, "apply", lambda *a: calls.append(a))
    q, k, v = qkv(dtype=torch.float32)
    meta = [t.to("meta").requires_grad_() for t in (q, k, v)]
    assert recompute_attention(*meta, 0.35).shape == q.shape and calls == []
    assert recompute_attention(q, k, v, 0.35).shape == q.shape and calls == []  # no grad
    with torch.no_grad():
        recompute_attention(q, k.requires_grad_(), v, 0.35)
    assert calls == []
    recompute_attention(q, k, v, 0.35)
    assert len(calls) == 1


def _saved_bytes(impl: str, dtype: torch.dtype) -> int:
    """Bytes a training forward of one APT block keeps for backward (non-parameters)."""
    torch.manual_seed(0)
    model = apply_apt(create_vit("vit_nano", num_classes=5, num_frames=4, img_size=64), 2)
    model.set_attn_impl(impl)
    params = {p.data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    x = torch.randn(2, 3, 4, 64, 64)  # 2 x 4 x 4 = 32 tokens
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            model.blocks[0](model.patch_embed(x) + model.pos_embed, model.kv_prompts(0))
    return sum(kept.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keeps_what_sdpa_keeps_not_the_probabilities(dtype):
    """The point of the kernel: SDPA's activation memory, where plain keeps (B, h, N, N+M)."""
    sdpa, recompute, plain = (_saved_bytes(i, dtype) for i in ("sdpa", "recompute", "plain"))
    b, h, n, m = 2, 2, 32, 2
    probs = b * h * n * (n + m) * torch.empty((), dtype=dtype).element_size()
    lse = b * h * n * 4  # SDPA's fp32 log-sum-exp, (B, h, N)
    assert recompute == sdpa
    assert plain - sdpa == probs - lse  # plain keeps the probabilities instead


def test_fp16_gradients_match_the_formula():
    """``--fp16``: the log-sum-exp and row sums split into fp16 halves the same way."""
    q, k, v = qkv(n=40, m=42, d=16, dtype=torch.float64, seed=5, q_scale=2.0)
    w = torch.randn(q.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    qd, kd, vd = (t.clone().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad((formula(qd, kd, vd, 0.25) * w).sum(), (qd, kd, vd))
    q16, k16, v16 = (t.to(torch.float16).requires_grad_() for t in (q, k, v))
    out = recompute_attention(q16, k16, v16, 0.25)
    grads = torch.autograd.grad((out.double() * w).sum(), (q16, k16, v16))
    for g, r in zip(grads, ref):
        assert g.dtype == torch.float16
        assert (g.double() - r).norm() <= 5e-3 * r.norm()


def test_full_fine_tuning_without_prompts_matches_sdpa():
    """No prompts: k and v are strided views of the qkv projection, and every weight of the
    block (qkv, proj, norms) gets its gradient through the kernel."""
    torch.manual_seed(0)
    model = create_vit("vit_nano", num_classes=5, num_frames=4, img_size=32)
    x = torch.randn(2, 3, 4, 32, 32)
    _, grads_s = _train_grads(model, x, "sdpa")
    _, grads_r = _train_grads(model, x, "recompute")
    assert "blocks.0.attn.qkv.weight" in grads_r
    for name, g in grads_s.items():
        torch.testing.assert_close(grads_r[name], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("keys_per_chunk", [None, 2])
@pytest.mark.parametrize("needs", ["extra", "all", "k", "v_and_extra_v"])
def test_prompt_keys_passed_apart_get_exact_gradients(monkeypatch, keys_per_chunk, needs):
    """``extra_kv`` (APT's prompts) equals concatenating them; where only the prompts need a
    gradient (the first APT block) the backward works on their rows alone."""
    if keys_per_chunk is not None:
        monkeypatch.setattr(kernels, "_CHUNK_ELEMENTS", 6 * keys_per_chunk)
    q, k, v = qkv()
    pk, pv = qkv(n=1, m=3, seed=7)[1:]  # 3 prompt keys and values
    wanted = {"extra": "de", "all": "qkvde", "k": "k", "v_and_extra_v": "ve"}[needs]
    named = dict(zip("qkvde", (q, k, v, pk, pv)))
    for name in wanted:
        named[name].requires_grad_()
    q, k, v, pk, pv = named.values()
    inputs = tuple(named[name] for name in wanted)

    def run(*args):
        values = dict(named, **dict(zip(wanted, args)))
        return recompute_attention(*(values[c] for c in "qkv"), 0.35, (values["d"], values["e"]))

    assert torch.autograd.gradcheck(run, inputs)
    out = run(*inputs)
    ref = formula(q, torch.cat((k, pk), -2), torch.cat((v, pv), -2), 0.35)
    torch.testing.assert_close(out, ref)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad((out * w).sum(), inputs),
                    torch.autograd.grad((ref * w).sum(), inputs)):  # fmt: skip
        torch.testing.assert_close(a, b)


def test_first_apt_block_backward_works_on_the_prompt_rows_alone(monkeypatch):
    """The first block's q, k, v come from the frozen patch embedding: its backward must not
    recompute the N x N probabilities (the cost of a whole block) for M prompt rows."""
    shapes = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        shapes.append((tuple(a.shape), tuple(b.shape)))
        return real_mm(a, b, **kw)

    q, k, v = qkv(n=6, m=6)
    pk, pv = (t.requires_grad_() for t in qkv(n=1, m=2, seed=7)[1:])
    out = recompute_attention(q, k, v, 0.35, (pk, pv))
    monkeypatch.setattr(torch, "mm", spy)
    out.sum().backward()
    assert shapes and all(a[0] == 2 for a, _ in shapes), shapes  # every GEMM: 2 prompt rows
    assert pk.grad is not None and pv.grad is not None and q.grad is None


def test_sdpa_model_runs_its_first_apt_block_through_the_prompt_rows_path(monkeypatch):
    """``attn_impl="sdpa"`` on a CPU: the first APT block (q, k, v from the frozen patch
    embedding) uses SDPA's forward and the prompt-rows backward; the other blocks stay on
    SDPA. Gradients equal the plain kernel's (an independent formula)."""
    torch.manual_seed(0)
    model = apply_apt(create_vit("vit_nano", num_classes=5, num_frames=4, img_size=32), 2)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(("kv_prompts", "head")))
    x = torch.randn(2, 3, 4, 32, 32)
    calls = []
    apply = kernels.RecomputeAttention.apply

    def spy(*args):
        calls.append(args)
        return apply(*args)

    monkeypatch.setattr(kernels.RecomputeAttention, "apply", spy)
    out_s, grads_s = _train_grads(model, x, "sdpa")
    assert len(calls) == 1 and not calls[0][0].requires_grad  # the first block only
    out_p, grads_p = _train_grads(model, x, "plain")
    torch.testing.assert_close(out_s, out_p)
    assert grads_s.keys() == grads_p.keys()
    assert grads_s["kv_prompts.prompt_embeddings_k"][0].abs().sum() > 0  # block 0's prompts
    for name in grads_s:
        torch.testing.assert_close(grads_s[name], grads_p[name], rtol=1e-4, atol=1e-6)
