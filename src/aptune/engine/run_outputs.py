"""What a user reads after (and during) a run: JSON-lines log, TensorBoard, plots, summary.

Only rank 0 writes. TensorBoard is used when the ``tensorboard`` package is installed
(it is a dependency; a missing install is reported once, not fatal).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from aptune.engine.metrics import EvalResult

log = logging.getLogger("aptune")


class RunLogger:
    """``log.txt`` (one JSON object per epoch, appended, as the reference) + TensorBoard."""

    def __init__(self, out: Path, tb_dir: str | None, enabled: bool, start_epoch: int = 0) -> None:
        self.out, self.enabled, self.writer = out, enabled, None
        if enabled:
            self._drop_epochs_from(start_epoch)
        if enabled and tb_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=tb_dir)
            except ImportError:
                log.info("tensorboard is not installed: scalars go to log.txt only")

    def _drop_epochs_from(self, start_epoch: int) -> None:
        """A resumed run re-does epochs >= start_epoch: forget their old lines (kept once)."""
        path = self.out / "log.txt"
        if not path.is_file():
            return
        kept = [h for h in self.history() if h.get("epoch", -1) < start_epoch]
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("".join(json.dumps(h) + "\n" for h in kept))
        tmp.replace(path)

    def step(self, global_step: int, values: dict) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(f"train/{k}", v, global_step)

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.out / "log.txt", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.writer.add_scalar(f"epoch/{k}", v, record["epoch"])
            self.writer.flush()

    def amend(self, fields: dict) -> None:
        """Add ``fields`` (validation) to the last epoch's line, rewritten atomically: the
        line is written before the epoch's checkpoint, validation runs after it."""
        if not self.enabled or not fields:
            return
        history = self.history()
        if not history:
            return
        history[-1].update(fields)
        path = self.out / "log.txt"
        tmp = path.with_suffix(".txt.tmp")
        tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
        tmp.replace(path)
        if self.writer is not None:
            for k, v in fields.items():
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"epoch/{k}", v, history[-1]["epoch"])
            self.writer.flush()

    def history(self) -> list[dict]:
        path = self.out / "log.txt"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h.get("train_loss") for h in history], marker="o", label="train")
    if any("val_loss" in h for h in history):
        ax1.plot(epochs, [h.get("val_loss") for h in history], marker="o", label="val")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    if any("val_top1" in h for h in history):
        ax2.plot(epochs, [h.get("val_top1") for h in history], marker="o", label="val top-1")
        ax2.plot(epochs, [h.get("val_top5") for h in history], marker="o", label="val top-5")
        ax2.legend()
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="validation accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, names: list[str] | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = confusion.shape[0]
    size = min(4 + 0.3 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion.sum(axis=1, keepdims=True)
    ax.imshow(confusion / np.maximum(rows, 1), cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        labels = names if names else [str(i) for i in range(n)]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(n), labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion (row-normalised)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_final_reports(
    out: Path, test: EvalResult, names: list[str] | None, result: dict, history: list[dict]
) -> None:
    """metrics.json, per_class.json, confusion.csv, curves.png, confusion.png, summary."""
    labels = names if names else [str(i) for i in range(len(test.per_class))]
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "per_class.json").write_text(json.dumps(dict(zip(labels, test.per_class)), indent=2))
    np.savetxt(out / "confusion.csv", test.confusion, fmt="%d", delimiter=",")
    if history:
        plot_curves(history, out / "curves.png")
    plot_confusion(test.confusion, names, out / "confusion.png")
    table = summary_table(result)
    (out / "summary.md").write_text(table + "\n")
    print(table)
    print(f"run folder: {out} (metrics.json, predictions.jsonl, curves.png, confusion.png)")


def summary_table(result: dict) -> str:
    test, best = result.get("test", {}), result.get("best_val", {})
    params = result.get("parameters", {})
    rows = [
        ("test top-1 (%)", f"{test.get('top1', float('nan')):.2f}"),
        ("test top-5 (%)", f"{test.get('top5', float('nan')):.2f}"),
        ("test videos x views", f"{test.get('num_videos')} x {test.get('views_per_video')}"),
        ("best val top-1 (%)", f"{best.get('top1', float('nan')):.2f} (epoch {best.get('epoch')})"),
        ("trainable parameters", f"{params.get('trainable', 0):,}"),
        ("trainable % of backbone", f"{params.get('trainable_percent_of_backbone', 0):.3f}"),
        ("train time (s)", f"{result.get('train_time_s', 0)}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"| {'metric':<{width}} | value |", f"|{'-' * (width + 2)}|-------|"]
    lines += [f"| {k:<{width}} | {v} |" for k, v in rows]
    return "\n".join(lines)
