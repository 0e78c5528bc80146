"""V-JEPA 2 in aptune: 3D RoPE, every method's trainable set,
prompts outside the rotary positions, named sizes on the meta device, checkpointing and
bf16, and ``forward_tokens`` for VideoMAE.

Tiny model: ``vjepa2_vit_nano_patch16_256`` (D 64, depth 2, heads 2, head dim 32) at
4 frames x 32 px, a (2, 2, 2) grid of 8 tokens. The RoPE references below are written
from the issue's formulas in fp64, independently of ``models/rope.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_checks import (
    assert_loss_halves,
    assert_steps_change_exactly_the_trainable,
    assert_zero_init_output,
)

import aptune
from aptune.models.rope import apply_rope, axis_dims, grid_positions, rope_tables, rotate_pairs
from aptune.models.sizes import MLP_RATIOS, MODEL_SIZES
from aptune.tuning.base import is_bias_or_norm

NANO = "vjepa2_vit_nano_patch16_256"
D, DEPTH, HEADS, C = 64, 2, 2, 4
d = D // HEADS
FRAMES, SIZE = 4, 32  # grid (2, 2, 2): 8 tokens
X = torch.randn(2, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
Y = torch.tensor([0, 3])


# -- references from the formulas (fp64) --------------------------------------
def ref_angles(grid: tuple[int, int, int], hd: int) -> torch.Tensor:
    """(N, hd) angles: [time | height | width | rest 0], element i of a chunk uses
    f[i % (c/2)], f_j = 10000 ** (-j / (c/2)); raster positions of the actual grid."""
    T, H, W = grid
    c = 2 * ((hd // 3) // 2)
    half = c // 2
    f = [10000.0 ** (-j / half) for j in range(half)]
    out = torch.zeros(T * H * W, hd, dtype=torch.float64)
    for n in range(T * H * W):
        pos = (n // (H * W), (n % (H * W)) // W, n % W)
        for axis, p in enumerate(pos):
            for i in range(c):
                out[n, axis * c + i] = p * f[i % half]
    return out


def ref_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """out = x cos + rot sin with rot[2m] = -x[2m+1], rot[2m+1] = x[2m] (fp64)."""
    x = x.double()
    rot = torch.empty_like(x)
    rot[..., 0::2] = -x[..., 1::2]
    rot[..., 1::2] = x[..., 0::2]
    return x * angles.cos() + rot * angles.sin()


def ref_attention(attn, x, grid, n_front=0, extra=None, rotate_extra=None):
    """One V-JEPA 2 attention by hand (fp64): RoPE on the last N tokens of q and k only,
    then the prompt keys/values appended unrotated (or rotated by ``rotate_extra`` angles,
    the wrong rule, to show the test can tell)."""
    B, L, _ = x.shape
    h, hd = attn.num_heads, attn.head_dim
    qkv = F.linear(x.double(), attn.qkv.weight.double(), attn.qkv.bias.double())
    q, k, v = qkv.view(B, L, 3, h, hd).permute(2, 0, 3, 1, 4)  # (B, h, L, hd)
    ang = ref_angles(grid, hd)
    q = torch.cat([q[..., :n_front, :], ref_rope(q[..., n_front:, :], ang)], dim=-2)
    k = torch.cat([k[..., :n_front, :], ref_rope(k[..., n_front:, :], ang)], dim=-2)
    if extra is not None:
        pk, pv = (t.double().expand(B, h, -1, hd) for t in extra)
        if rotate_extra is not None:
            pk = ref_rope(pk, rotate_extra)
        k, v = torch.cat([k, pk], dim=-2), torch.cat([v, pv], dim=-2)
    w = (q @ k.transpose(-1, -2) * hd**-0.5).softmax(-1)
    out = (w @ v).transpose(1, 2).reshape(B, L, h * hd)
    return F.linear(out, attn.proj.weight.double(), attn.proj.bias.double())


def build(transfer_type: str = "linear", options: dict | None = None, seed: int = 0, **kw):
    torch.manual_seed(seed)
    kw = {"num_frames": FRAMES, "input_size": SIZE, **kw}
    return aptune.build_model(
        NANO, num_classes=C, transfer_type=transfer_type, **kw, **(options or {})
    )


# -- RoPE ------------------------------------------------------------------------------
def test_axis_dims_from_the_head_dim():
    assert axis_dims(64) == 20 and axis_dims(80) == 26
    assert axis_dims(32) == 10 and axis_dims(88) == 28  # V-JEPA 2 ViT-g: 1408 / 22 = 64 -> 20


@pytest.mark.parametrize("hd", [32, 64, 80])
def test_tables_are_the_tiled_frequencies_of_the_raster_grid(hd):
    grid = (3, 4, 5)
    cos, sin = rope_tables(grid, hd)
    assert cos.shape == sin.shape == (60, hd) and cos.dtype == torch.float32
    ang = ref_angles(grid, hd)
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=1e-6)
    c = axis_dims(hd)
    # tiled, not interleaved: the second half of a chunk repeats the first half's angles
    torch.testing.assert_close(sin[:, c // 2 : c], sin[:, : c // 2])
    assert not torch.allclose(sin[:, 0:c:2], sin[:, 1:c:2])  # neighbours differ
    # the rest of the head is unrotated
    assert torch.equal(cos[:, 3 * c :], torch.ones(60, hd - 3 * c))
    assert torch.equal(sin[:, 3 * c :], torch.zeros(60, hd - 3 * c))
    # token 1 is (t, h, w) = (0, 0, 1): only the width chunk turns, by f_j
    half = c // 2
    f = torch.tensor([10000.0 ** (-j / half) for j in range(half)], dtype=torch.float64)
    torch.testing.assert_close(sin[1, 2 * c : 3 * c].double(), f.repeat(2).sin(), atol=1e-6, rtol=0)
    assert torch.equal(sin[1, : 2 * c], torch.zeros(2 * c))


def test_pair_rotation_and_apply():
    x = torch.arange(8.0)
    assert rotate_pairs(x).tolist() == [-1.0, 0.0, -3.0, 2.0, -5.0, 4.0, -7.0, 6.0]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 24, 64, generator=g)  # (B, h, N, d), grid (2, 3, 4)
    cos, sin = rope_tables((2, 3, 4), 64)
    torch.testing.assert_close(
        apply_rope(q, cos, sin).double(), ref_rope(q, ref_angles((2, 3, 4), 64)), atol=1e-5, rtol=0
    )
    # tokens before the last N (VPT's) stay as they are
    qp = torch.cat([torch.randn(2, 3, 5, 64, generator=g), q], dim=-2)
    out = apply_rope(qp, cos, sin)
    assert torch.equal(out[..., :5, :], qp[..., :5, :])
    torch.testing.assert_close(out[..., 5:, :], apply_rope(q, cos, sin))


def test_raster_positions():
    t, h, w = grid_positions((2, 3, 4))
    for n in range(24):
        assert (t[n].item(), h[n].item(), w[n].item()) == (n // 12, (n % 12) // 4, n % 4)


def test_positions_come_from_the_actual_input_grid(monkeypatch):
    """A 2 x 48 x 64 input to a model built for 256 px: grid (1, 3, 4), raster order."""
    m = aptune.build_model(NANO, num_classes=C, transfer_type="linear", num_frames=2).eval()
    assert m.img_size == 256
    seen = []
    m.blocks[0].attn.register_forward_pre_hook(lambda mod, args: seen.append(args[2]))
    x = torch.randn(1, 3, 2, 48, 64)
    with torch.no_grad():
        tokens = m.forward_tokens(x)
        logits = m(x)
    assert tokens.shape == (1, 12, D) and logits.shape == (1, C)
    cos, sin = seen[0]
    ang = ref_angles((1, 3, 4), d)
    torch.testing.assert_close(cos.double(), ang.cos(), atol=1e-6, rtol=0)
    torch.testing.assert_close(sin.double(), ang.sin(), atol=1e-6, rtol=0)


def test_angles_in_fp32_under_bf16_autocast():
    grid, hd = (8, 24, 24), 64  # ViT-g at 384 px, 16 frames: positions up to 23
    ang = ref_angles(grid, hd)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cos, sin = rope_tables(grid, hd)
        x = torch.randn(1, 2, cos.shape[0], hd).to(torch.bfloat16)
        out = apply_rope(x, cos, sin)
    assert cos.dtype == sin.dtype == torch.float32
    assert (cos.double() - ang.cos()).abs().max() < 1e-5
    assert (sin.double() - ang.sin()).abs().max() < 1e-5
    # what bf16 angles would cost: far more than the fp32 tables' error
    bf16_angles = ang.to(torch.bfloat16).float()
    assert (bf16_angles.double().sin() - ang.sin()).abs().max() > 1e-2
    assert out.dtype == torch.bfloat16
    ref = ref_rope(x, ang)
    # computed in fp32 and rounded once: within one bf16 rounding of the fp64 result
    assert ((out.double() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()


# -- APT and VPT stay outside the rotary positions --------------------------------------
def _block0_io(m, x):
    got = {}

    def pre(mod, args):
        got["in"] = args[0].detach().clone()

    def post(mod, args, out):
        got["out"] = out.detach().clone()

    h1 = m.blocks[0].attn.register_forward_pre_hook(pre)
    h2 = m.blocks[0].attn.register_forward_hook(post)
    with torch.no_grad():
        m(x)
    h1.remove()
    h2.remove()
    return got["in"], got["out"]


def test_apt_prompts_join_after_rope_unrotated():
    m = build("prompt", dict(prompt_num_tokens=3, prompt_reparam=True)).eval()
    with torch.no_grad():  # prompts of a size that matters next to the data keys
        m.kv_prompts.prompt_embeddings_k.normal_(0, 2.0)
        m.kv_prompts.prompt_embeddings_v.normal_(0, 2.0)
    x_in, out = _block0_io(m, X)
    extra = m.kv_prompts(0)
    expected = ref_attention(m.blocks[0].attn, x_in, (2, 2, 2), extra=extra)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    # the wrong rules give other numbers: prompts rotated as if they were the last
    # three tokens, or no prompts at all
    wrong = ref_attention(
        m.blocks[0].attn, x_in, (2, 2, 2), extra=extra, rotate_extra=ref_angles((2, 2, 2), d)[-3:]
    )
    assert (wrong - expected).abs().max() > 1e-2
    assert (ref_attention(m.blocks[0].attn, x_in, (2, 2, 2)) - expected).abs().max() > 1e-2


@pytest.mark.parametrize("kind", ["vpt_shallow", "vpt_deep"])
def test_vpt_tokens_carry_no_position(kind):
    m = build(kind, dict(vpt_num_tokens=3)).eval()
    with torch.no_grad():
        m.seq_prompts.vpt_prompts.normal_(0, 1.0)
    x_in, out = _block0_io(m, X)
    assert x_in.shape == (2, 3 + 8, D)
    expected = ref_attention(m.blocks[0].attn, x_in, (2, 2, 2), n_front=3)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)


# -- every method's trainable set in closed form ------------------------------------------
def encoder_count(D: int, L: int, hidden: int) -> int:
    """patch_embed (tubelet conv 2x16x16 + bias) + L blocks + the final norm."""
    block = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + (D * hidden + hidden)
    block += hidden * D + D
    return 3 * 2 * 16 * 16 * D + D + L * block + 2 * D


def pooler_count(D: int, depth: int = 3) -> int:
    """query + ``depth`` self-attention blocks (fused qkv, proj, MLP 4D) + the cross block
    (q, kv, no output projection, MLP 4D)."""
    self_block = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * D + 8 * D * D + 5 * D
    cross = 2 * D + (D * D + D) + (2 * D * D + 2 * D) + 2 * D + 8 * D * D + 5 * D
    return D + depth * self_block + cross


ENCODER = encoder_count(D, DEPTH, 4 * D)
HEAD = pooler_count(D) + D * C + C  # attentive pooler + classifier: trained by every method
P, R, A = 3, 4, 8  # prompt tokens, LoRA rank, adapter bottleneck
APT = DEPTH * 2 * P * d + DEPTH * 2 * P  # Pk, Pv (L, P, d) + scales (L, 2, P)
LORA_QV = DEPTH * 2 * R * (D + D)  # q and v slices of the fused qkv: A (r, D) + B (D, r) each
LORA_ALL = DEPTH * R * (3 * (D + D) + (D + D) + (D + 4 * D) + (4 * D + D))
ADAPTER = DEPTH * (D * A + A + A * D + D)
# patch bias; per block norm1, qkv bias (q, k and v), proj, norm2, fc1, fc2; final norm
BITFIT = D + DEPTH * (2 * D + 3 * D + D + 2 * D + 4 * D + D) + 2 * D
APT_O = dict(prompt_num_tokens=P, prompt_reparam=True)
VPT_O, ADA_O, LORA_O = dict(vpt_num_tokens=P), dict(adapter_dim=A), dict(lora_rank=R)
CASES = [
    # id, transfer_type, options, trainable count, untrained == frozen backbone
    ("prompt", "prompt", APT_O, HEAD + APT, False),
    ("prompt_block1", "prompt", dict(APT_O, prompt_start=1), HEAD + APT // 2, False),
    ("vpt_shallow", "vpt_shallow", VPT_O, HEAD + P * D, False),
    ("vpt_deep", "vpt_deep", VPT_O, HEAD + DEPTH * P * D, False),
    ("adapter", "adapter", ADA_O, HEAD + ADAPTER, True),
    ("lora", "lora", LORA_O, HEAD + LORA_QV, True),
    ("lora_all", "lora", dict(lora_rank=R, lora_targets="all"), HEAD + LORA_ALL, True),
    ("bitfit", "bitfit", {}, HEAD + BITFIT, True),
    ("linear", "linear", {}, HEAD, True),
    ("end2end", "end2end", {}, ENCODER + HEAD, True),
    ("prompt+lora", "prompt+lora", dict(APT_O, lora_rank=R), HEAD + APT + LORA_QV, False),
]  # fmt: skip


def allowed(model, name: str, transfer_type: str) -> bool:
    """Each method's trainable set by name: the attentive head always, then its own."""
    if transfer_type == "end2end" or name.startswith(("pooler.", "head.")):
        return True
    prefixes = {"prompt": "prompt_", "vpt_shallow": "vpt_", "vpt_deep": "vpt_"}
    prefixes.update(adapter="adapter_", lora="lora_")
    for method in transfer_type.split("+"):
        if method == "bitfit" and is_bias_or_norm(model, name):
            return True
        if method in prefixes and any(p.startswith(prefixes[method]) for p in name.split(".")):
            return True
    return False


def test_closed_forms_match_the_named_sizes():
    sizes = {}
    for n, p in build().named_parameters():
        part = n.split(".")[0]
        sizes[part] = sizes.get(part, 0) + p.numel()
    assert sizes["patch_embed"] + sizes["blocks"] + sizes["norm"] == ENCODER
    assert sizes["pooler"] + sizes["head"] == HEAD
    assert set(sizes) == {"patch_embed", "blocks", "norm", "pooler", "head"}
    assert encoder_count(1024, 24, 4096) == 303_885_312


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_method_table(case):
    _, transfer_type, options, count, same_at_init = case
    m = build(transfer_type, options)
    names = dict(m.named_parameters())
    assert m.pooler is not None and m.head_kind == "attentive"
    assert aptune.parameter_report(m).trainable == count
    assert {k for k, p in names.items() if p.requires_grad} == {
        k for k in names if allowed(m, k, transfer_type)
    }
    assert all(p.requires_grad for k, p in names.items() if k.startswith("pooler."))

    assert_zero_init_output(m, build("linear"), X, C, same_at_init)
    assert_steps_change_exactly_the_trainable(m, X, Y)


def test_linear_head_option():
    """``head="linear"``: mean of the tokens, fc_norm, Linear; no pooler."""
    m = build("linear", head="linear").eval()
    assert m.pooler is None
    trainable = {k for k, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    assert aptune.parameter_report(m).trainable == 2 * D + D * C + C
    with torch.no_grad():
        torch.testing.assert_close(m(X), m.head(m.fc_norm(m.forward_tokens(X).mean(1))))
    apt = build("prompt", APT_O, head="linear")
    assert aptune.parameter_report(apt).trainable == 2 * D + D * C + C + APT


def test_apt_trains_on_cpu():
    """A short APT run on the tiny V-JEPA 2 lowers the loss of a fixed batch."""
    m = build("prompt", dict(prompt_num_tokens=4, prompt_reparam=True), seed=3)
    x = torch.randn(4, 3, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    assert_loss_halves(m, x, torch.tensor([0, 1, 2, 3]))


# -- named sizes on the meta device -----------------------------------------------------
VJEPA2_NAMES = [n for n in MODEL_SIZES if n.startswith("vjepa2_")]


@pytest.mark.parametrize("name", VJEPA2_NAMES)
def test_every_named_size_builds_on_meta(name, capsys):
    with torch.device("meta"):
        m = aptune.build_model(name, num_classes=174, transfer_type="linear")
    assert all(p.is_meta for p in m.parameters())
    dim, depth, _ = MODEL_SIZES[name]
    hidden = int(dim * MLP_RATIOS.get(name, 4.0))
    encoder = sum(
        p.numel()
        for n, p in m.named_parameters()
        if n.startswith(("patch_embed.", "blocks.", "norm."))
    )
    with capsys.disabled():
        print(f"\n{name}: encoder {encoder:,} parameters (MLP hidden {hidden})")
    assert encoder == encoder_count(dim, depth, hidden)
    if name == "vjepa2_vit_large_patch16_256":
        assert encoder == 303_885_312
    if "giant" in name:
        assert hidden == 6144
    trainable = aptune.parameter_report(m).trainable
    assert trainable == pooler_count(dim) + dim * 174 + 174


# -- gradient checkpointing and bf16 ----------------------------------------------------
@pytest.mark.parametrize("transfer_type", ["end2end", "prompt"])
def test_use_checkpoint_same_outputs_and_gradients(transfer_type):
    plain = build(transfer_type, seed=2)
    ckpt = build(transfer_type, seed=7, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    outs = []
    for m in (plain, ckpt):
        m.zero_grad()
        out = m(X)
        F.cross_entropy(out, Y).backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    grads = {n: p.grad for n, p in plain.named_parameters() if p.requires_grad}
    for n, p in ckpt.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads[n], rtol=1e-5, atol=1e-7, msg=n)
    assert "blocks.0.attn.qkv.weight" in grads or "kv_prompts.prompt_embeddings_k" in grads


def test_bf16_autocast_forward_backward_close_to_fp32():
    m = build("end2end", seed=4)
    with torch.no_grad():  # a head whose logits are not all near zero
        m.head.weight.normal_(0, 0.5)
    ref_tokens = m.forward_tokens(X).detach()
    m.zero_grad()
    F.cross_entropy(m(X), Y).backward()
    ref = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = m.forward_tokens(X)
        loss = F.cross_entropy(m(X), Y)
    assert tokens.dtype == torch.bfloat16
    loss.backward()
    assert (tokens.float() - ref_tokens).abs().max() < 0.1
    for n, p in m.named_parameters():
        assert p.grad.dtype == torch.float32
        cos = F.cosine_similarity(p.grad.flatten(), ref[n].flatten(), dim=0)
        assert cos > 0.98, (n, cos.item())


# -- forward_tokens for VideoMAE ------------------------------------------------------
def test_videomae_forward_tokens_is_the_last_block_before_pooling():
    torch.manual_seed(0)
    m = aptune.build_model("vit_nano", num_classes=C, num_frames=FRAMES, input_size=SIZE).eval()
    seen = []
    m.blocks[-1].register_forward_hook(lambda mod, args, out: seen.append(out))
    with torch.no_grad():
        tokens = m.forward_tokens(X)
        assert tokens.shape == (2, 8, 64)
        assert torch.equal(tokens, seen[0])
        torch.testing.assert_close(m.forward_features(X), m.fc_norm(tokens.mean(1)))
        torch.testing.assert_close(m(X), m.head(m.fc_norm(tokens.mean(1))))
