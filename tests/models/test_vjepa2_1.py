"""V-JEPA 2.1 in aptune: its rotary tables, Meta-layout files against an independent fp64
forward, the named sizes on the meta device, the methods, APT training, family mix-ups.

The files are written as Meta keeps them (``module.backbone.`` keys under ``ema_encoder`` or
``target_encoder`` beside ``predictor`` and ``opt``; ``video_mod_embed``, the image path
``img_mod_embed`` / ``patch_embed_img``, four ``norms_block``) with random values in every
tensor. The reference forward below is written from the V-JEPA 2.1 facts alone (fp64, no
aptune code): tubelet conv, ``+ video_mod_embed``, pre-norm blocks with fused qkv and the
interleaved 3D RoPE on positions scaled onto the 16 x 16 grid, then ``norms_block[-1]``.

Tiny config: D 64, depth 2, heads 2 (head dim 32: 10 rotated dims per axis, 2 unrotated),
4 frames of 48 x 64 px: a (2, 3, 4) grid, so the height (x 15/2) and width (x 15/3)
scalings differ.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from method_checks import assert_loss_halves

import aptune
from aptune.models.checkpoint_files import CheckpointError
from aptune.models.rope import axis_dims, rope_tables
from aptune.models.sizes import MLP_RATIOS, MODEL_SIZES, VJEPA2_INPUT_SIZES

NANO = "vjepa2_1_vit_nano_patch16_384"
NANO_2 = "vjepa2_vit_nano_patch16_256"
D, DEPTH, HEADS, C = 64, 2, 2, 4
HD = D // HEADS
FRAMES, H, W = 4, 48, 64  # grid (2, 3, 4): 24 tokens
GRID = (2, 3, 4)
X = torch.randn(2, 3, FRAMES, H, W, generator=torch.Generator().manual_seed(1))
PREFIX = "module.backbone."


# -- the reference, from the facts alone (fp64) -------------------------------------------
def ref_angles(grid, hd, interleaved=True, scale=True):
    """(N, hd) angles [t | h | w | rest 0]; 2.1: element i of a chunk uses f[i // 2] and
    h, w are scaled by 15 / (H - 1), 15 / (W - 1); the wrong variants for contrast."""
    T, Hp, Wp = grid
    c = 2 * ((hd // 3) // 2)
    half = c // 2
    f = [10000.0 ** (-j / half) for j in range(half)]
    sh = 15 / (Hp - 1) if scale and Hp > 1 else 1.0
    sw = 15 / (Wp - 1) if scale and Wp > 1 else 1.0
    out = torch.zeros(T * Hp * Wp, hd, dtype=torch.float64)
    for n in range(T * Hp * Wp):
        pos = (n // (Hp * Wp), (n % (Hp * Wp)) // Wp * sh, n % Wp * sw)
        for axis, p in enumerate(pos):
            for i in range(c):
                out[n, axis * c + i] = p * f[i // 2 if interleaved else i % half]
    return out


def ref_rope(x, angles):
    rot = torch.empty_like(x)
    rot[..., 0::2] = -x[..., 1::2]
    rot[..., 1::2] = x[..., 0::2]
    return x * angles.cos() + rot * angles.sin()


def ref_forward(sd, x, heads=HEADS, **angle_kw):
    """Meta's V-JEPA 2.1 encoder on (B, 3, T, H, W) from its state dict (no prefixes)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = F.conv3d(x.double(), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=(2, 16, 16))  # fmt: skip
    B, Dm, T, Hp, Wp = x.shape
    x = x.flatten(2).transpose(1, 2) + sd["video_mod_embed"]  # (B, N, D), raster t, h, w
    hd = Dm // heads
    ang = ref_angles((T, Hp, Wp), hd, **angle_kw)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        p = f"blocks.{i}."
        y = F.layer_norm(x, (Dm,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-6)
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
        q, k, v = qkv.view(B, -1, 3, heads, hd).permute(2, 0, 3, 1, 4)
        q, k = ref_rope(q, ang), ref_rope(k, ang)
        a = ((q @ k.transpose(-1, -2)) * hd**-0.5).softmax(-1) @ v
        a = a.transpose(1, 2).reshape(B, -1, Dm)
        x = x + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(x, (Dm,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-6)
        y = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        x = x + F.linear(y, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    last = max(int(k.split(".")[1]) for k in sd if k.startswith("norms_block."))
    n = f"norms_block.{last}."
    return F.layer_norm(x, (Dm,), sd[n + "weight"], sd[n + "bias"], 1e-6)


# -- Meta-layout files ---------------------------------------------------------------------
def meta_encoder(seed=0, dim=D, depth=DEPTH, hidden=4 * D, norms=4, std=0.1):
    """A V-JEPA 2.1 encoder as Meta's files keep it (no prefix yet), random everywhere."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, mean=0.0, s=std):
        return torch.randn(*shape, generator=g) * s + mean

    sd = {
        "patch_embed.proj.weight": rnd(dim, 3, 2, 16, 16, s=0.02),
        "patch_embed.proj.bias": rnd(dim, s=0.02),
        "patch_embed_img.proj.weight": rnd(dim, 3, 16, 16, s=0.02),
        "patch_embed_img.proj.bias": rnd(dim, s=0.02),
        "video_mod_embed": rnd(1, 1, dim, s=0.5),
        "img_mod_embed": rnd(1, 1, dim, s=0.5),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = rnd(dim, mean=1.0), rnd(dim)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = rnd(3 * dim, dim), rnd(3 * dim)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = rnd(dim, dim), rnd(dim)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = rnd(hidden, dim), rnd(hidden)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = rnd(dim, hidden), rnd(dim)
    for j in range(norms):
        sd[f"norms_block.{j}.weight"] = rnd(dim, mean=1.0, s=0.3)
        sd[f"norms_block.{j}.bias"] = rnd(dim, s=0.3)
    return sd


def save_meta(path: Path, sd: dict, key: str = "ema_encoder", **extra) -> Path:
    predictor = {PREFIX + "predictor_embed.weight": torch.zeros(4, 4)}
    opt = {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]}
    obj = {key: {PREFIX + k: v for k, v in sd.items()}, "predictor": predictor, "opt": opt,
           "epoch": 5, **extra}  # fmt: skip
    torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("vjepa2_1")
    ema, target = meta_encoder(0), meta_encoder(7)
    return {
        "ema": ema,
        "target": target,
        # ViT-B/L distilled files: ema_encoder; ViT-g/G: target_encoder
        "dist": save_meta(tmp / "vjepa2_1_vitx_dist_vitG_384.pt", ema),
        "g": save_meta(tmp / "vjepa2_1_vitx_384.pt", target, key="target_encoder"),
        "dir": tmp,
    }


def load(path, name=NANO, transfer_type="linear", **kw):
    kw = {"num_frames": FRAMES, "input_size": W, "num_classes": C, **kw}
    return aptune.build_model(name, checkpoint=path, transfer_type=transfer_type, **kw).eval()


def tokens_of(model, x=X):
    with torch.no_grad():
        return model.forward_tokens(x)


# -- rotary tables -------------------------------------------------------------------------
@pytest.mark.parametrize("hd", [32, 64, 88])
def test_tables_are_interleaved_and_scaled_onto_the_16_grid(hd):
    grid = (3, 4, 6)
    cos, sin = rope_tables(grid, hd, interleaved=True, spatial_scale_to=16)
    ang = ref_angles(grid, hd)
    assert cos.shape == (72, hd) and cos.dtype == torch.float32
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=1e-6)
    c = axis_dims(hd)
    assert torch.equal(sin[:, 0 : 3 * c : 2], sin[:, 1 : 3 * c : 2])  # pairs share f_m
    assert torch.equal(cos[:, 3 * c :], torch.ones(72, hd - 3 * c))
    # the last row and column sit at position 15 of the pre-training grid; time unscaled
    last = grid[1] * grid[2] - 1  # token (0, 3, 5)
    assert sin[last, c : c + 2].double().sub(torch.tensor(15.0).sin()).abs().max() < 1e-6
    assert sin[last, 2 * c : 2 * c + 2].double().sub(torch.tensor(15.0).sin()).abs().max() < 1e-6
    t1 = grid[1] * grid[2]  # token (1, 0, 0)
    assert sin[t1, :2].double().sub(torch.tensor(1.0).sin()).abs().max() < 1e-6


def test_v_jepa_2_tables_are_unchanged_by_the_defaults():
    grid, hd = (2, 3, 4), 32
    cos, sin = rope_tables(grid, hd)
    ang = ref_angles(grid, hd, interleaved=False, scale=False)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=1e-6)
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=1e-6)
    sin21 = rope_tables(grid, hd, interleaved=True, spatial_scale_to=16)[1]
    assert (sin21 - sin).abs().max() > 0.1


def test_a_grid_one_token_high_or_wide_is_not_scaled():
    for grid in ((2, 1, 4), (2, 3, 1), (1, 1, 1)):
        cos, sin = rope_tables(grid, 32, interleaved=True, spatial_scale_to=16)
        assert torch.isfinite(cos).all() and torch.isfinite(sin).all()
        torch.testing.assert_close(sin.double(), ref_angles(grid, 32).sin(), rtol=0, atol=1e-6)


# -- Meta's files against the reference ----------------------------------------------------
def test_ema_encoder_file_gives_the_reference_tokens(files, caplog, capsys):
    with caplog.at_level(logging.INFO, logger="aptune"):
        model = load(files["dist"])
    assert model.version == "2.1" and model.video_mod_embed.shape == (1, 1, D)
    tokens = tokens_of(model)
    want = ref_forward(files["ema"], X)
    diff = (tokens.double() - want).abs().max().item()
    with capsys.disabled():
        print(f"\nV-JEPA 2.1 tiny (48x64): tokens max diff {diff:.2e} (max |token| "
              f"{want.abs().max():.2f})")  # fmt: skip
    assert tokens.shape == (2, 24, D) and diff < 1e-4
    # what it dropped, in one log line
    logged = " ".join(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
    assert "img_mod_embed" in logged and "patch_embed_img.*" in logged
    assert "norms_block.0-2" in logged
    torch.testing.assert_close(model.norm.weight.detach(), files["ema"]["norms_block.3.weight"])


def test_target_encoder_file_and_square_input(files):
    model = load(files["g"])
    x = torch.randn(1, 3, FRAMES, 64, 64, generator=torch.Generator().manual_seed(4))
    tokens = tokens_of(model, x)
    assert (tokens.double() - ref_forward(files["target"], x)).abs().max() < 1e-4


def test_tiled_or_unscaled_positions_would_give_other_tokens(files):
    """The reference with V-JEPA 2's tiling, or without the scaling, is far from aptune's
    tokens: the test above would fail if either fact were wrong."""
    tokens = tokens_of(load(files["dist"])).double()
    for kw in ({"interleaved": False}, {"scale": False}, {"interleaved": False, "scale": False}):
        assert (ref_forward(files["ema"], X, **kw) - tokens).abs().max() > 1e-2, kw
    # and the V-JEPA 2 model with the same weights (no 2.1 positions) differs too
    v2 = aptune.build_model(NANO_2, num_classes=C, num_frames=FRAMES, transfer_type="linear")
    own = load(files["dist"]).state_dict()
    v2.load_state_dict({k: v for k, v in own.items() if k != "video_mod_embed"})
    with torch.no_grad():
        x = X
        v2.eval()
        plain = v2.forward_tokens(x).double()
    assert (plain - tokens).abs().max() > 1e-2


def test_the_last_norms_block_present_is_the_final_norm(tmp_path):
    for norms in (2, 6):
        sd = meta_encoder(3, norms=norms)
        path = save_meta(tmp_path / f"n{norms}.pt", sd)
        model = load(path)
        torch.testing.assert_close(
            model.norm.bias.detach(), sd[f"norms_block.{norms - 1}.bias"], rtol=0, atol=0
        )
        assert (tokens_of(model).double() - ref_forward(sd, X)).abs().max() < 1e-4


def test_explicit_model_key_and_the_probe_layout(files, tmp_path):
    model = load(files["g"], model_key="target_encoder")
    torch.testing.assert_close(model.video_mod_embed.detach(), files["target"]["video_mod_embed"])
    # Meta's 2.1 probes: the V-JEPA 2 probe layout (module. keys, fused qkv / kv, linear)
    src = aptune.build_model(NANO, num_classes=C, num_frames=FRAMES, pooler_heads=16)
    probe = {"module." + k.replace("head.", "linear.", 1): v for k, v in src.state_dict().items()
             if k.startswith(("pooler.", "head."))}  # fmt: skip
    torch.save({"classifiers": [probe]}, tmp_path / "probe.pt")
    model = load(files["dist"], head_checkpoint=tmp_path / "probe.pt")
    assert model.pooler.num_heads == 16
    for k, v in src.state_dict().items():
        if k.startswith(("pooler.", "head.")):
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert (tokens_of(model).double() - ref_forward(files["ema"], X)).abs().max() < 1e-4


def test_an_aptune_2_1_file_round_trips(tmp_path):
    from safetensors.torch import save_file

    model = aptune.build_model(NANO, num_classes=C, num_frames=FRAMES, input_size=W,
                               transfer_type="linear")  # fmt: skip
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    assert "video_mod_embed" in sd and "norm.weight" in sd
    save_file(sd, tmp_path / "m.safetensors")
    again = load(tmp_path / "m.safetensors")
    for k, v in sd.items():
        torch.testing.assert_close(again.state_dict()[k], v, rtol=0, atol=0)


# -- named sizes -------------------------------------------------------------------------
def encoder_count(dim: int, depth: int, hidden: int) -> int:
    """patch_embed + video_mod_embed + blocks + the final norm (Meta's norms_block[-1])."""
    block = 2 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + 2 * dim
    block += dim * hidden + hidden + hidden * dim + dim
    return 3 * 2 * 16 * 16 * dim + dim + dim + depth * block + 2 * dim


NAMES_2_1 = [n for n in MODEL_SIZES if n.startswith("vjepa2_1_")]
HIDDEN = {"base": 3072, "large": 4096, "giant": 6144, "gigantic": 8192}


@pytest.mark.parametrize("name", NAMES_2_1)
def test_every_2_1_size_builds_on_meta(name, capsys):
    with torch.device("meta"):
        m = aptune.build_model(name, num_classes=174, transfer_type="linear")
    assert all(p.is_meta for p in m.parameters())
    assert m.version == "2.1" and m.img_size == 384 == VJEPA2_INPUT_SIZES[name]
    dim, depth, heads = MODEL_SIZES[name]
    hidden = m.blocks[0].mlp.fc1.out_features
    assert hidden == round(dim * MLP_RATIOS.get(name, 4.0))
    size = name.split("_")[3]
    if size in HIDDEN:
        assert hidden == HIDDEN[size]
    parts = ("patch_embed.", "video_mod_embed", "blocks.", "norm.")
    encoder = sum(p.numel() for n, p in m.named_parameters() if n.startswith(parts))
    with capsys.disabled():
        print(f"\n{name}: encoder {encoder:,} parameters (MLP hidden {hidden})")
    assert encoder == encoder_count(dim, depth, hidden)
    assert aptune.parameter_report(m).trainable == sum(
        p.numel() for n, p in m.named_parameters() if n.startswith(("pooler.", "head."))
    )


# -- methods and training ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("transfer_type", "options"),
    [("prompt", dict(prompt_num_tokens=3, prompt_reparam=True)),
     ("vpt_deep", dict(vpt_num_tokens=3)), ("adapter", dict(adapter_dim=8)),
     ("lora", dict(lora_rank=4)), ("bitfit", {}), ("linear", {}), ("end2end", {})],
)  # fmt: skip
def test_trainable_sets_are_v_jepa_2s(transfer_type, options):
    """Every method trains what it trains on V-JEPA 2; video_mod_embed only end to end."""
    sets = []
    for name in (NANO_2, NANO):
        torch.manual_seed(0)
        m = aptune.build_model(name, num_classes=C, num_frames=FRAMES, input_size=W,
                               transfer_type=transfer_type, **options)  # fmt: skip
        sets.append({n for n, p in m.named_parameters() if p.requires_grad})
    extra = {"video_mod_embed"} if transfer_type == "end2end" else set()
    assert sets[1] == sets[0] | extra


def test_end2end_reaches_video_mod_embed():
    m = aptune.build_model(NANO, num_classes=C, num_frames=FRAMES, transfer_type="end2end")
    F.cross_entropy(m(X), torch.tensor([0, 3])).backward()
    assert m.video_mod_embed.grad is not None and m.video_mod_embed.grad.abs().sum() > 0


def test_apt_trains_on_a_tiny_2_1_model(files):
    torch.manual_seed(3)
    m = load(files["dist"], transfer_type="prompt", prompt_num_tokens=4, prompt_reparam=True)
    x = torch.randn(4, 3, FRAMES, H, W, generator=torch.Generator().manual_seed(5))
    assert_loss_halves(m, x, torch.tensor([0, 1, 2, 3]))


def test_bf16_autocast_runs():
    m = aptune.build_model(NANO, num_classes=C, num_frames=FRAMES, transfer_type="end2end")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = m.forward_tokens(X)
    assert tokens.dtype == torch.bfloat16 and tokens.shape == (2, 24, D)


# -- one line for a file of the other family ------------------------------------------------
def _one_line(excinfo: pytest.ExceptionInfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def test_family_mix_ups_are_one_line(files, tmp_path):
    v2 = aptune.build_model(NANO_2, num_classes=C, num_frames=FRAMES)
    v2_meta = {PREFIX + k: v for k, v in v2.state_dict().items()
               if k.startswith(("patch_embed.", "blocks.", "norm."))}  # fmt: skip
    torch.save({"target_encoder": v2_meta, "predictor": {}}, tmp_path / "vitn.pt")
    torch.save({"predictor": {PREFIX + "predictor_embed.weight": torch.zeros(2)}},
               tmp_path / "predictor.pt")  # fmt: skip
    cases = [
        # a 2.1 file (either key) to a V-JEPA 2 name: the 2.1 name of its size
        (NANO_2, files["dist"], ("vjepa2_1_vitx_dist_vitG_384.pt", "V-JEPA 2.1",
                                 f"--model {NANO}")),
        (NANO_2, files["g"], ("V-JEPA 2.1", f"--model {NANO}")),
        ("vjepa2_vit_large_patch16_256", files["dist"], ("V-JEPA 2.1", f"--model {NANO}")),
        # a V-JEPA 2 file to a 2.1 name: the V-JEPA 2 name of its size
        (NANO, tmp_path / "vitn.pt", ("vitn.pt", "not V-JEPA 2.1", f"--model {NANO_2}")),
        # the wrong 2.1 size: the one it is
        ("vjepa2_1_vit_large_patch16_384", files["dist"], ("width 64", "1024",
                                                           f"--model {NANO}")),
        (NANO, tmp_path / "predictor.pt", ("predictor.pt", "predictor", "ema_encoder")),
        # a VideoMAE name: build it with a vjepa2_* name
        ("vit_nano_patch16_224", files["dist"], ("vjepa2_",)),
    ]  # fmt: skip
    for name, path, needles in cases:
        with pytest.raises(CheckpointError) as e:
            aptune.build_model(name, checkpoint=path, num_frames=FRAMES, input_size=W)
        assert all(n in _one_line(e) for n in needles), str(e.value)


def test_odd_sizes_and_non_encoder_keys_are_one_line(files, tmp_path):
    odd = save_meta(tmp_path / "odd.pt", meta_encoder(2, dim=32, depth=1, hidden=64))
    with pytest.raises(CheckpointError) as e:
        aptune.build_model(NANO_2, checkpoint=odd, num_frames=FRAMES)
    assert "a vjepa2_1_* name (e.g. --model vjepa2_1_vit_large_patch16_384)" in _one_line(e)
    for key, needle in (("predictor", "predictor"), ("opt", "optimizer")):
        with pytest.raises(CheckpointError) as e:
            load(files["dist"], model_key=key)
        msg = _one_line(e)
        assert needle in msg and "ema_encoder" in msg, msg


def test_a_hugging_face_v_jepa_2_folder_to_a_2_1_name_is_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.VJEPA2Config(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=2, crop_size=32,
        frames_per_clip=4, pred_hidden_size=32, pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
    )  # fmt: skip
    transformers.VJEPA2Model(cfg).save_pretrained(tmp_path / "hf")
    with pytest.raises(CheckpointError) as e:
        aptune.build_model(NANO, checkpoint=tmp_path / "hf", num_frames=FRAMES)
    msg = _one_line(e)
    assert "Hugging Face" in msg and "V-JEPA 2.1" in msg and f"--model {NANO_2}" in msg, msg
