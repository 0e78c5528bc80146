"""``aptune export --format adapter|peft`` and ``aptune push``: share what a run trained.

A finished run (not locked by a live training, with a verified checkpoint) becomes a small
folder: aptune's adapter (every method; ``sharing/adapter_export.py``) or, for a LoRA run on
a VideoMAE base transformers can load, a PEFT LoRA adapter (``sharing/peft_lora.py``).
The adapter folder is read back at once and must give the run's logits (``TOLERANCE``);
``push`` builds it in a temporary folder and uploads it (``sharing/hub_push.py``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

from aptune.config import ConfigError
from aptune.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from aptune.engine.run import run_checkpoint
from aptune.engine.run_lock import check_not_running
from aptune.engine.trained import TrainedRun, open_run
from aptune.sharing.adapter_export import AdapterContent, write_adapter, write_folder
from aptune.sharing.base_source import describe_base
from aptune.sharing.errors import SharingError
from aptune.sharing.hub_push import check_can_push, check_repo_id, upload
from aptune.sharing.model_card import peft_card
from aptune.sharing.peft_lora import check_peft_fits, peft_files, peft_logits
from aptune.tuning import parameter_report

log = logging.getLogger("aptune")
TOLERANCE = 1e-5
#: transformers computes attention its own way: agreement to float rounding, not bits
PEFT_TOLERANCE = 1e-4
SHARE_FORMATS = ("adapter", "peft")


def _checkpoint_tensors(folder: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The checkpoint's tensors and whether they are the trainable ones only."""
    with safe_open(str(folder / "model.safetensors"), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    return tensors, meta.get("trainable_only", "false") == "true"


def _metrics(run: Path) -> dict | None:
    path = run / "metrics.json"
    if not path.is_file():
        log.warning("%s has no metrics.json (stopped before its test?): the card has none", run)
        return None
    return json.loads(path.read_text())


def finished_run(run: Path, which: str, what: str) -> tuple[TrainedRun, AdapterContent]:
    """A run folder that no live training holds, its model and what its adapter holds."""
    run = Path(run)
    if not (run / "config.yaml").is_file():
        raise ConfigError(f"{run}: no config.yaml; give the output_dir of an aptune train run")
    check_not_running(run, what)
    trained = open_run(run, which, device="cpu")  # verifies the checkpoint's sha256s
    _, folder = run_checkpoint(run, trained.which)  # the folder open_run loaded
    tensors, trainable_only = _checkpoint_tensors(folder)
    model = trained.model
    content = AdapterContent(
        config=trained.config,
        methods=list(model.tuning_configs),
        tensors=tensors,
        trainable_only=trainable_only,
        class_names=trained.class_names,
        report=parameter_report(model),
        checkpoint=trained.which,
        metrics=_metrics(run),
        run_name=run.resolve().name,
    )
    return trained, content


def example_clips(cfg) -> torch.Tensor:
    """A random batch (2, 3, T, S, S) of the run's clip size."""
    m = cfg.model
    gen = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, m.num_frames, m.input_size, m.input_size, generator=gen)


def max_logit_difference(a: torch.nn.Module, b: torch.nn.Module, cfg) -> float:
    """max |a(x) - b(x)| on a random batch of the run's clip size."""
    x = example_clips(cfg)
    with torch.no_grad():
        return float((a.float().eval()(x) - b.float().eval()(x)).abs().max())


def export_adapter(run: Path, out: Path, which: str = "best", repo_id: str | None = None) -> float:
    """Write the adapter folder ``out``, load it back; -> max logit difference to the run."""
    trained, content = finished_run(run, which, "export it")
    base = describe_base(trained.config.model.finetune)
    write_adapter(out, content, base, repo_id)
    again = open_run(out, device="cpu")
    err = max_logit_difference(trained.model, again.model, trained.config)
    if not err <= TOLERANCE:
        raise SharingError(
            f"{out}: the adapter's logits differ from the run's by {err:.2e} > {TOLERANCE:.0e}"
        )
    return err


def export_peft(run: Path, out: Path, which: str = "best") -> float | None:
    """Write a PEFT LoRA folder ``out``, load it with peft on transformers' VideoMAE;
    -> the max logit difference to the run (``PEFT_TOLERANCE``), None without peft."""
    trained, content = finished_run(run, which, "export it")
    base = describe_base(trained.config.model.finetune)
    check_peft_fits(trained.config, content.methods, base)
    config, tensors = peft_files(trained.config, content.methods, content.tensors, base)
    c = trained.config
    how = {"num_labels": c.data.nb_classes, "num_frames": c.model.num_frames,
           "image_size": c.model.input_size}  # fmt: skip
    files = {
        "adapter_config.json": json.dumps(config, indent=2) + "\n",
        "README.md": peft_card(
            config,
            content.metrics,
            how,
            content.run_name,
            (list(IMAGENET_MEAN), list(IMAGENET_STD)),
        ),  # fmt: skip
        "classes.txt": "\n".join(content.class_names) + "\n",
    }
    write_folder(out, files, tensors, {"format": "pt"})
    x = example_clips(c)
    theirs = peft_logits(out, base, how, x)
    if theirs is None:
        log.info("peft or transformers is not installed: %s written unchecked", out)
        return None
    with torch.no_grad():
        err = float((theirs - trained.model.float().eval()(x)).abs().max())
    if not err <= PEFT_TOLERANCE:
        raise SharingError(
            f"{out}: peft's logits differ from the run's by {err:.2e} > {PEFT_TOLERANCE:.0e} "
            "(is the base's config.json the one the run read?); use --format adapter"
        )
    return err


def export_shared(run: Path, fmt: str, out: Path, which: str = "best") -> float | None:
    if fmt == "adapter":
        return export_adapter(run, out, which)
    if fmt == "peft":
        return export_peft(run, out, which)
    raise SharingError(f"--format must be one of {SHARE_FORMATS}, got {fmt!r}")


def push_run(
    run: Path, repo: str, private: bool = False, revision: str | None = None, which: str = "best"
) -> str:
    """Build the adapter folder in a temporary folder and upload it; -> the commit URL."""
    repo = check_repo_id(repo)
    token = check_can_push()  # before the export: a missing token costs nothing
    with tempfile.TemporaryDirectory(prefix="aptune-push-") as tmp:
        folder = Path(tmp) / "adapter"
        err = export_adapter(run, folder, which, repo_id=repo)
        log.info("adapter of %s checked (max logit difference %.1e); uploading", run, err)
        cfg = json.loads((folder / "adapter_config.json").read_text())
        if cfg.get("base_model_sha256"):
            log.warning(
                "%s was trained on the local base %s: whoever loads %s needs that file (its "
                "sha256 is recorded); a run on a Hub id (--finetune ORG/NAME) loads anywhere",
                run, cfg["base_model_name_or_path"], repo,
            )  # fmt: skip
        return upload(folder, repo, token, private=private, revision=revision)


__all__ = [
    "PEFT_TOLERANCE",
    "SHARE_FORMATS",
    "TOLERANCE",
    "export_adapter",
    "export_peft",
    "export_shared",
    "finished_run",
    "push_run",
]
