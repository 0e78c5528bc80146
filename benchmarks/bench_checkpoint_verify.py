"""Cost of sha256-verified checkpoints: write, verify and load, side by side.

For ViT-B (16 frames, 224 px) checkpoints as ``aptune train`` writes them: APT
(trainable tensors only + AdamW state) and full fine-tuning (every tensor + AdamW
state). Times, as medians of interleaved repeats: the whole atomic write (which hashes
every file for COMPLETE) and the hashing part alone; the checks a reader does without
and with sha256; and ``load_training_state`` (read + copy into the model). Run:

    python benchmarks/bench_checkpoint_verify.py [--repeats 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import aptune
from aptune.engine.checkpoint import check_complete, load_training_state, save_training_state
from aptune.engine.integrity import manifest
from aptune.engine.optim import build_optimizer


def timed(fn, *args, **kw) -> float:
    start = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - start


def setup(transfer_type: str):
    model = aptune.build_model("vit_base", transfer_type=transfer_type, num_classes=174,
                               num_frames=16, input_size=224)  # fmt: skip
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05)
    for g in opt.param_groups:  # AdamW state as after one step, without running one
        for p in g["params"]:
            opt.state[p] = {"step": torch.tensor(1.0), "exp_avg": torch.zeros_like(p),
                            "exp_avg_sq": torch.zeros_like(p)}  # fmt: skip
    return model, opt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None)
    a = ap.parse_args()
    cases = {"APT (prompt)": setup("prompt"), "full fine-tuning": setup("end2end")}
    rows = {name: {k: [] for k in ("write", "hash", "check", "verify", "load")} for name in cases}
    sizes = {}
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        for r in range(a.repeats):
            for name, (model, opt) in cases.items():  # interleaved
                out = Path(tmp) / f"{name[:3]}{r}"
                full = name.startswith("full")
                t = rows[name]
                t["write"].append(
                    timed(save_training_state, out, 0, model, opt, trainable_only=not full)
                )
                folder = out / "checkpoint-0000"
                sizes[name] = sum(p.stat().st_size for p in folder.iterdir())
                t["hash"].append(timed(manifest, folder))
                t["check"].append(timed(check_complete, folder, hashes=False))
                t["verify"].append(timed(check_complete, folder, hashes=True))
                t["load"].append(timed(load_training_state, folder, model, opt, verified=True))
    print(
        "| checkpoint | size | write (incl. hashing) | hashing | check without sha256 "
        "| check with sha256 | load_training_state |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, t in rows.items():
        med = {k: statistics.median(v) for k, v in t.items()}
        print(
            f"| {name} | {sizes[name] / 2**20:.1f} MB | {med['write']:.3f} s | "
            f"{med['hash']:.3f} s | {med['check']:.3f} s | {med['verify']:.3f} s | "
            f"{med['load']:.3f} s |"
        )


if __name__ == "__main__":
    main()
