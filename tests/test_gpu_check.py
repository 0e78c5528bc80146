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
            assert "| ok |" in rows[f"kernel {impl} {dtype} fwd+bwd (vit_nano)"]
    assert "exit 0" in rows["aptune train bf16, --aug_device cpu"]
    assert any("--use_checkpoint" in name for name in rows)
    assert "FAIL" not in proc.stdout
