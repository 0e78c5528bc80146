"""Export the encoder of a pre-training run as a small backbone file plus its model card.

``python -m aptune.pretrain.export RUN OUT.safetensors --card OUT.md ...`` is the last step
of ``scripts/make_demo_backbone.sh``. Only the ``encoder.*`` tensors are kept (in
VideoMAE's pre-training names, which ``build_model(checkpoint=...)`` recognises), so the
shipped file is a quarter smaller than the run's ``pretrain.safetensors`` and carries no
decoder nobody fine-tunes. The run's architecture, data description and loss curve travel
in the safetensors metadata; the card is generated from the same numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from aptune.pretrain.runner import PRETRAIN_FILE


def export_encoder(run: Path, out: Path, data: dict, extra: dict | None = None) -> dict:
    """Write ``out`` with the encoder of ``run/pretrain.safetensors``; returns its metadata."""
    src = run / PRETRAIN_FILE if run.is_dir() else run
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("encoder.")}  # noqa: SIM118
    if not tensors:
        raise ValueError(f"{src}: no encoder.* tensors; is it an aptune pretrain output?")
    history = _history(run if run.is_dir() else run.parent)
    summary = json.loads(meta.get("summary", "{}"))
    summary["loss_per_epoch"] = [round(h["train_loss"], 4) for h in history]
    summary.update(extra or {})
    new_meta = {
        "format": "aptune",
        "kind": "videomae-pretrain-encoder",
        "architecture": meta.get("architecture", "{}"),
        "data": json.dumps(data),
        "summary": json.dumps(summary),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(out), new_meta)
    out.chmod(0o644)  # shipped as package data: readable by everyone
    return {"architecture": json.loads(new_meta["architecture"]), "data": data,
            "summary": summary, "num_params": sum(t.numel() for t in tensors.values()),
            "bytes": out.stat().st_size}  # fmt: skip


def _history(run: Path) -> list[dict]:
    log = run / "log.txt"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def model_card(info: dict, command: str, config: dict) -> str:
    """Markdown model card: what the file is, how it was made, how well it learnt."""
    arch, data, s = info["architecture"], info["data"], info["summary"]
    curve = s.get("loss_per_epoch", [])
    norm = config.get("norm_pix_loss", True)
    target = "per-patch normalised pixels" if norm else "raw pixels in [0, 1]"
    rows = "\n".join(f"| {i} | {v:.4f} |" for i, v in enumerate(curve))
    keys = ("model", "num_frames", "input_size", "tubelet_size", "sampling_rate", "mask_ratio",
            "mask_type", "decoder_dim", "decoder_depth")  # fmt: skip
    recipe = ("batch_size", "epochs", "lr", "min_lr", "warmup_epochs", "weight_decay",
              "opt_betas", "min_crop_scale", "flip", "norm_pix_loss", "seed")  # fmt: skip
    lines = [
        "# demo_backbone.safetensors: a tiny VideoMAE encoder pre-trained by `aptune pretrain`",
        "",
        "Self-supervised (no labels) VideoMAE pre-training of a tiny ViT on synthetic motion",
        "videos, shipped so `aptune demo` runs offline. It is a toy: it knows moving bars on",
        "textured backgrounds, nothing about real video. Use official VideoMAE checkpoints for",
        "real data.",
        "",
        "## Architecture",
        "",
        *(f"- {k}: `{arch.get(k)}`" for k in keys if k in arch),
        f"- encoder parameters: {info['num_params']:,} (file {info['bytes'] / 1e6:.2f} MB, "
        "fp32, keys `encoder.*` in VideoMAE's pre-training layout; decoder not shipped)",
        "",
        'Load it: `aptune.build_model("{m}", num_frames={f}, input_size={i}, '
        "checkpoint=aptune.pretrain.demo_backbone_path(), ...)`.".format(
            m=arch.get("model"), f=arch.get("num_frames"), i=arch.get("input_size")
        ),
        "",
        "## Data",
        "",
        *(f"- {k}: {v}" for k, v in data.items()),
        "",
        "## Recipe",
        "",
        *(f"- {k}: `{config.get(k)}`" for k in recipe if k in config),
        f"- AdamW, lr per 256 samples, linear warmup then cosine; {arch.get('mask_type', 'tube')}"
        f" masking; MSE on the masked tokens' {target} (VideoMAE, arXiv 2203.12602)",
        "- why mask ratio 0.75 and raw-pixel targets here: see docs/pretrain.md",
        "",
        "## Result",
        "",
        f"- final training loss: {curve[-1]:.4f} (first epoch {curve[0]:.4f})"
        if curve
        else "- no loss recorded",
        f"- build time: {s.get('build_time_s', '?')} s on {s.get('machine', '?')}",
        "",
        "| epoch | train loss |",
        "| --- | --- |",
        rows,
        "",
        "## Rebuild",
        "",
        "```",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def export_backbone(
    run: Path,
    out: Path,
    data: dict,
    extra: dict | None = None,
    card: Path | None = None,
    command: str = "",
) -> dict:
    """:func:`export_encoder`, then the model card at ``card`` (from the run's
    ``config.yaml``) when one is asked for; returns the encoder's metadata."""
    info = export_encoder(run, out, data, extra)
    if card is not None:
        import yaml

        config = yaml.safe_load((run / "config.yaml").read_text())
        card.write_text(model_card(info, command, config))
    return info


if __name__ == "__main__":  # `python -m aptune.pretrain.export`: the command line is the CLI's
    from aptune.cli.pretrain import export_main

    raise SystemExit(export_main())
