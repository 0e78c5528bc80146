"""Outputs of ``aptune profile``: a Markdown table, the raw JSON and a PNG plot.

Kept apart from the measuring code so that re-rendering old JSON never imports the
measurement machinery, and so the plotting library loads only when writing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n:.1f} GB"


def _g(x: float) -> str:
    """GFLOPs: one decimal for ViT sizes, significant digits for tiny test models."""
    return f"{x:.1f}" if x >= 100 else f"{x:.4g}"


def _seconds(s: float) -> str:
    return f"{s:.3f}" if s >= 0.01 else f"{s * 1000:.2f} ms"


def label(row: dict) -> str:
    """A row's name: the method, marked where it ran with gradient checkpointing."""
    return row["method"] + (" +ckpt" if row.get("use_checkpoint") else "")


def _vs(value: str, row: dict, key: str) -> str:
    """``value``, followed by the checkpointed row's ratio to the row without."""
    return f"{value} ({row[key]:.2f}x)" if key in row else value


def _mb(row: dict, key: str) -> str:
    """MB, two digits below 10 (tiny models); "-" in JSON written before the figure existed."""
    if key not in row:
        return "-"
    return f"{row[key]:.0f}" if row[key] >= 10 else f"{row[key]:.2g}"


def meta_table(settings: dict[str, Any], rows: list[dict]) -> list[str]:
    """``--meta`` rows: sizes and counted FLOPs only (nothing was run or timed)."""
    lines = [
        f"### `{settings['model']}`, {settings['num_frames']}x{settings['input_size']}, "
        f"{settings['nb_classes']} classes, counted on meta tensors (no timing, no memory)",
        "",
        "| method | tunable params | % of backbone | backbone params | fwd GFLOPs/clip "
        "| fwd vs linear | train-step GFLOPs/clip | trainable ckpt (fp32) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        rel = f"x{r['fwd_vs_linear']:.4f}" if r.get("fwd_vs_linear") else "-"
        lines.append(
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_pct']:.3f}% "
            f"| {r['backbone_params']:,} | {_g(r['fwd_gflops'])} | {rel} "
            f"| {_g(r['train_gflops'])} | {_size(r['ckpt_bytes'])} |"
        )
    lines += [
        "",
        f"Tunable params include {head_parts(settings['model'])}; % is of the backbone without "
        "head. GFLOPs per clip counted by `torch.utils.flop_counter.FlopCounterMode` on meta "
        "tensors (multiply-add = 2, SDPA included); the train step is forward + backward.",
    ]
    return lines


def head_parts(model: str) -> str:
    """The head every row trains: V-JEPA 2's attentive one (its default), or VideoMAE's."""
    from aptune.models.sizes import is_vjepa2

    return "the attentive `pooler` + `head`" if is_vjepa2(model) else "`fc_norm` + `head`"


def markdown(settings: dict[str, Any], rows: list[dict], sweep: list[dict]) -> str:
    """The table users read, plus the settings that produced it."""
    if settings.get("meta"):
        return _tail(meta_table(settings, rows), settings, sweep)
    precision = "bf16 autocast" if settings.get("bf16") else "fp32"
    lines = [
        f"### `{settings['model']}`, {settings['num_frames']}x{settings['input_size']}, "
        f"batch {settings['batch_size']}, {settings['nb_classes']} classes, {precision}, "
        f"{settings.get('threads')} CPU threads",
        "",
        "| method | tunable params | % of backbone | fwd GFLOPs/clip | fwd vs linear "
        "| train-step GFLOPs/clip | inference s/clip | train step s/clip "
        "| peak RSS infer / train (MB) | train RSS over model (MB) "
        "| activations kept (MB) | activation peak (MB) | trainable ckpt |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in rows:
        rel = f"x{r['fwd_vs_linear']:.4f}" if r.get("fwd_vs_linear") else "-"
        step = _vs(_seconds(r["train_s_per_clip"]), r, "train_vs_plain")
        kept = _vs(_mb(r, "act_kept_mb"), r, "act_kept_vs_plain")
        peak = _vs(_mb(r, "act_peak_mb"), r, "act_peak_vs_plain")
        lines.append(
            f"| {label(r)} | {r['trainable_params']:,} | {r['trainable_pct']:.3f}% "
            f"| {_g(r['fwd_gflops'])} | {rel} | {_g(r['train_gflops'])} "
            f"| {_seconds(r['infer_s_per_clip'])} | {step} "
            f"| {r['peak_infer_mb']:.0f} / {r['peak_train_mb']:.0f} "
            f"| +{r['extra_train_mb']:.0f} | {kept} | {peak} | {_size(r['ckpt_bytes'])} |"
        )
    lines += [
        "",
        f"Tunable params include {head_parts(settings['model'])}; % is of the backbone without "
        "head. GFLOPs counted by `torch.utils.flop_counter.FlopCounterMode` (multiply-add = 2, "
        "SDPA included), per clip; the train step is forward + backward (frozen weights get no "
        "weight gradient). Times: best of the timed repeats after one warm-up (all are in the "
        "JSON). Memory: "
        "peak RSS (`VmHWM`) of a fresh process per method, and the train phase's peak over "
        "the RSS before it (activations, gradients, AdamW state). Activations: tensors counted "
        "exactly over one forward + backward, those a training forward keeps for backward and "
        "the most alive at once (recomputation and gradients included); `+ckpt` rows ran with "
        "gradient checkpointing, (x) their ratio to the row without. Checkpoint: safetensors "
        "of the trainable tensors only (fp32).",
    ]
    return _tail(lines, settings, sweep)


def _tail(lines: list[str], settings: dict[str, Any], sweep: list[dict]) -> str:
    """The FLOP sweep table and the command line, under either main table."""
    if sweep:
        base = sweep[0]["linear"]
        lines += [
            "",
            "Forward GFLOPs/clip by prompt count (counted on meta tensors):",
            "",
            "| prompt tokens | APT (prompt) | APT vs linear | VPT-deep | VPT-deep vs linear |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for s in sweep:
            lines.append(
                f"| {s['tokens']} | {_g(s['prompt'])} | +{100 * (s['prompt'] / base - 1):.2f}% "
                f"| {_g(s['vpt_deep'])} | +{100 * (s['vpt_deep'] / base - 1):.2f}% |"
            )
    lines += ["", f"Command: `{settings.get('command', '')}`  ",
              f"torch {settings.get('torch')}, {settings.get('cpu_count')} CPUs "
              f"({settings.get('cpu')}), {settings.get('date')}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(path: Path, rows: list[dict], sweep: list[dict]) -> None:
    """Params vs FLOPs, time per clip, and the FLOP sweep (APT flat, VPT-deep rising)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timed = all("train_s_per_clip" in r for r in rows)  # --meta rows have no times
    panels = 1 + int(timed) + int(bool(sweep))
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), squeeze=False)
    axes = list(axes[0])
    ax = axes[0]
    for r in (r for r in rows if not r.get("use_checkpoint")):  # +ckpt: the same point
        ax.scatter(r["trainable_params"], r["fwd_gflops"], s=40)
        ax.annotate(label(r), (r["trainable_params"], r["fwd_gflops"]),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("tunable parameters (log)")
    ax.set_ylabel("forward GFLOPs / clip")
    ax.set_title("cost of inference vs tunable size")

    for ax in axes[1 : 1 + int(timed)]:
        _time_panel(ax, rows)
    if sweep:
        _sweep_panel(axes[-1], sweep)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _time_panel(ax: Any, rows: list[dict]) -> None:
    names = [label(r) for r in rows]
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [r["train_s_per_clip"] for r in rows], 0.4, label="train step")
    ax.barh([y - 0.2 for y in ys], [r["infer_s_per_clip"] for r in rows], 0.4, label="inference")
    ax.set_yticks(list(ys), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds / clip (CPU)")
    ax.set_title("measured time")
    ax.legend(fontsize=8)


def _sweep_panel(ax: Any, sweep: list[dict]) -> None:
    tokens = [s["tokens"] for s in sweep]
    ax.plot(tokens, [s["prompt"] for s in sweep], "o-", label="APT (prompt)")
    ax.plot(tokens, [s["vpt_deep"] for s in sweep], "s-", label="VPT-deep")
    ax.plot(tokens, [s["linear"] for s in sweep], "k--", lw=1, label="frozen backbone")
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("forward GFLOPs / clip")
    ax.set_title("FLOPs vs prompt count")
    ax.legend(fontsize=8)


def write_outputs(
    out: Path, settings: dict[str, Any], rows: list[dict], sweep: list[dict]
) -> dict[str, Path]:
    """``profile.md``, ``profile.json`` and ``profile.png`` in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "profile.md", "json": out / "profile.json", "png": out / "profile.png"}
    paths["md"].write_text(markdown(settings, rows, sweep))
    payload = {"settings": settings, "rows": rows, "flops_sweep": sweep}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    plot(paths["png"], rows, sweep)
    return paths
