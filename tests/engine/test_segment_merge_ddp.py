"""``--segment_merge tokens`` under a 2-process launch (gloo on CPU): the sharded test equals
the single-process one, padded duplicate included."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import TINY, write_dataset  # noqa: E402

from aptune.cli import main  # noqa: E402

VJ = "vjepa2_vit_nano_patch16_256"


@pytest.mark.slow  # two processes start, import torch and decode every test video
def test_two_ranks_merge_tokens_like_one(tmp_path: Path):
    data = write_dataset(tmp_path / "data", {"train": 1, "val": 1, "test": 2}, frames=32)
    run = tmp_path / "run"
    flags = [*TINY, "--transfer_type", "prompt", "--data_path", str(data), "--output_dir",
             str(run), "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0",
             "--init_scale", "50", "--batch_size_val", "8"]  # fmt: skip
    flags[flags.index("--model") + 1] = VJ
    assert main(["train", *flags]) == 0
    # seven test videos: the distributed sampler pads rank 1 with a copy of video 0
    odd = tmp_path / "odd"
    odd.mkdir()
    lines = (data / "test.csv").read_text().splitlines()[:7]
    (odd / "test.csv").write_text("\n".join(lines) + "\n")
    assert main(["eval", str(run), "--data_path", str(odd), "--output", str(tmp_path / "one")]) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={port}", "-m", "aptune.cli", "eval", str(run), "--data_path",
           str(odd), "--output", str(tmp_path / "two")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("top-1") == 1  # one process group: rank 0 alone reports
    one = json.loads((tmp_path / "one" / "eval_metrics.json").read_text())["test"]
    two = json.loads((tmp_path / "two" / "eval_metrics.json").read_text())["test"]
    assert one["num_videos"] == two["num_videos"] == 7 and two["views_per_video"] == 4
    assert (two["top1"], two["top5"]) == (one["top1"], one["top5"])
    assert two["loss"] == pytest.approx(one["loss"], abs=2e-6)
    rows = [(tmp_path / d / "eval_predictions.jsonl").read_text().splitlines() for d in ("one",
                                                                                          "two")]
    for a, b in zip(*rows):
        pa, pb = json.loads(a), json.loads(b)
        assert pa["path"] == pb["path"] and pa["pred"] == pb["pred"]
        assert [p for *_, p in pa["top5"]] == pytest.approx([p for *_, p in pb["top5"]], abs=1e-5)
