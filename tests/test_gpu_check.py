"""``scripts/gpu_check.sh`` runs on a CPU too (shrunk): every check it can do here passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_prints_one_table_and_passes_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "| check | result | status |" and all(ln.startswith("| ") for ln in lines)
    rows = {ln.split(" | ")[0].lstrip("| "): ln for ln in lines[2:]}
    for impl in ("sdpa", "plain", "recompute"):
        for dtype in ("fp32", "bf16"):
            assert "| ok |" in rows[f"kernel {impl} {dtype} fwd+bwd (vit_nano, trained-size head)"]
    assert "exit 0" in rows["aptune train bf16, --aug_device cpu"]
    assert any("--use_checkpoint" in name for name in rows)
    assert "FAIL" not in proc.stdout


def test_fp16_kernel_check_scales_the_loss_like_gradscaler():
    """Unscaled, a fresh head's prompt gradients underflow fp16 and the check compared zeros."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    device = torch.device("cpu")
    x = torch.randn(1, 3, 4, 32, 32)
    net = gpu_check._apt("vit_nano", 4, 32, "plain", device, head_scale=1e-4)
    want, one = gpu_check._prompt_grad(net, x, None)
    got, scale = gpu_check._prompt_grad(net, x, torch.float16)
    assert one == 1.0 and 1.0 < scale <= 2.0**16
    assert want.abs().max() < 6e-8  # below fp16's smallest number without a scale
    err = float((got - want).norm() / want.norm())
    assert err < 0.05, err
