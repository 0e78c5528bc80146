"""Clearly separable videos for engine tests: a coloured square moving in one of four
directions over a dark background, written as real mp4/h264 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from aptune.data.synthetic import write_video

#: flags shared by the engine tests: a tiny ViT on 8-frame 32-px clips, 4 classes
TINY = [
    "--model", "vit_nano", "--data_set", "SSV2", "--nb_classes", "4", "--num_frames", "8",
    "--input_size", "32", "--short_side_size", "32", "--num_workers", "0", "--no_progress",
    "--mixup", "0", "--cutmix", "0", "--reprob", "0", "--drop_path", "0",
    "--test_num_segment", "2", "--test_num_crop", "2", "--num_sample", "1",
    # one fixed kernel: runs compared bit for bit must not each time their own (sdpa and
    # plain agree only to rounding); --attn_impl auto is tested in test_speed.py
    "--attn_impl", "sdpa",
]  # fmt: skip

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: each class also has its own colour, so a tiny model separates them in a few epochs
COLOURS = {
    "left": (230, 40, 40), "right": (40, 230, 40), "up": (60, 60, 240), "down": (230, 230, 60)
}  # fmt: skip


def square_clip(direction: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    dx, dy = DIRECTIONS[direction]
    side = size // 2
    travel = size - side
    clip = np.full((frames, size, size, 3), 20, dtype=np.uint8)
    clip += rng.integers(0, 15, size=clip.shape, dtype=np.uint8)
    jitter = int(rng.integers(-size // 8, size // 8 + 1))
    for t in range(frames):
        p = t / max(frames - 1, 1)
        along = int(round(p * travel)) if (dx + dy) > 0 else int(round((1 - p) * travel))
        across = (size - side) // 2 + jitter
        x, y = (along, across) if dx else (across, along)
        clip[t, y : y + side, x : x + side] = COLOURS[direction]
    return clip


def write_dataset(root: Path, per_class: dict[str, int], frames=8, size=48, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    classes = list(DIRECTIONS)
    root.mkdir(parents=True, exist_ok=True)
    for split, n in per_class.items():
        lines = []
        for label, name in enumerate(classes):
            for k in range(n):
                path = root / "videos" / split / f"{name}_{k:02d}.mp4"
                write_video(path, square_clip(name, frames, size, rng), 25)
                lines.append(f"{path} {label}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def apt_flags(data: Path, out: Path, workers: int = 0) -> list[str]:
    """APT with every source of randomness on (prompt dropout, RandAugment, erasing)."""
    flags = TINY + [
        "--transfer_type", "prompt", "--prompt_num_tokens", "2", "--prompt_reparam",
        "--prompt_dropout", "0.1", "--data_path", str(data), "--output_dir", str(out),
        "--batch_size", "4", "--epochs", "3", "--warmup_epochs", "1", "--lr", "0.5",
        "--save_ckpt_freq", "1", "--seed", "3", "--is_aa", "--aa", "rand-m4-n2-mstd0.2-inc1",
        "--reprob", "0.25", "--num_sample", "2",
    ]  # fmt: skip
    flags[flags.index("--num_workers") + 1] = str(workers)
    return flags


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "checkpoint-0002" / "model.safetensors"))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = final_weights(a), final_weights(b)
    assert set(wa) == set(wb) and "kv_prompts.prompt_embeddings_k" in wa
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=0, msg=k)


class Killed(BaseException):
    """What a test raises to stand for a process killed right after a save."""


def train_until_saved(flags: list[str], monkeypatch, epoch: int) -> None:
    """Run ``aptune train`` and end it like a kill right after epoch ``epoch``'s complete
    checkpoint (the save itself finished), then put the real save back."""
    import pytest

    import aptune.engine.run
    from aptune.cli import main

    real_save = aptune.engine.run.save_training_state

    def save_then_die(output_dir, at, *a, **kw):
        folder = real_save(output_dir, at, *a, **kw)
        if at == epoch:
            raise Killed
        return folder

    monkeypatch.setattr(aptune.engine.run, "save_training_state", save_then_die)
    with pytest.raises(Killed):
        main(["train", *flags])
    monkeypatch.setattr(aptune.engine.run, "save_training_state", real_save)


def signal_at_check(monkeypatch, n: int, signum: int) -> None:
    """Send ``signum`` to this process on the run's ``n``-th stop-flag check (each step and
    each epoch's end poll once), as a launcher would between two steps."""
    import os

    from aptune.engine.distributed import StopVote

    real, calls = StopVote.poll, []

    def poll(vote, value, what, final=False):
        calls.append(what)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return real(vote, value, what, final)

    monkeypatch.setattr(StopVote, "poll", poll)

