"""Named training recipes, and the flags the reference parses but never reads.

A flag the user does not pass means what it means in the reference's ``run_class_apt.py``
(the parser's defaults). ``--recipe NAME`` sets a named recipe's values explicitly instead;
a ``--config`` file and flags on the command line still override them, in that order.
"""

from __future__ import annotations

from typing import Any

#: name -> the flag values it sets. ``reference`` sets nothing: the defaults are its values.
RECIPES: dict[str, dict[str, Any]] = {
    "reference": {},
    # VideoMAE's full fine-tuning recipe (its run_class_finetuning.py defaults): strong
    # regularisation for training every weight, as with --transfer_type end2end
    "videomae-finetune": {
        "opt": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "layer_decay": 0.75,
        "epochs": 30,
        "warmup_epochs": 5,
        "warmup_lr": 1e-6,
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "reprob": 0.25,
        "drop_path": 0.1,
    },
}

#: flags whose values decide what is trained: the start-up log line names each
RECIPE_FLAGS = (
    "opt", "lr", "min_lr", "warmup_lr", "warmup_epochs", "warmup_steps", "epochs",
    "weight_decay", "weight_decay_end", "layer_decay", "clip_grad", "smoothing", "mixup",
    "cutmix", "cutmix_minmax", "mixup_prob", "mixup_switch_prob", "reprob", "drop_path",
    "drop", "attn_drop_rate", "fc_drop_rate", "batch_size", "update_freq", "num_sample",
)  # fmt: skip

#: flag -> (the reference's default, what happens instead): parsed by the reference (and
#: so by aptune) but read by neither; passing another value gets a log line
INERT_FLAGS: dict[str, tuple[Any, str]] = {
    "color_jitter": (0.4, "the reference never reads it; colour changes come from --aa"),
    "crop_pct": (None, "the reference never reads it; test views use --short_side_size"),
    "resplit": (False, "the reference never reads it"),
    "num_segments": (1, "the reference never reads it; clips have --num_frames frames"),
    "world_size": (1, "the launcher (torchrun / torch.distributed.launch) sets the world size"),
    "dist_url": ("env://", "the process group starts from the launcher's environment"),
    "dist_on_itp": (False, "the process group starts from the launcher's environment"),
    "zero_stage": (0, "DeepSpeed is not used: trainable tensors are few and replicated"),
    "model_ema_force_cpu": (False, "the weight average stays on the model's device"),
}


#: Meta's V-JEPA 2 evaluation protocols (``--eval_preset``): name -> (num_frames,
#: sampling_rate, test_num_segment, test_num_crop). Meta samples every protocol densely (a
#: fixed frame step), so a preset also sets ``sampling dense``, SSv2 included.
EVAL_PRESETS: dict[str, tuple[int, int, int, int] | None] = {
    "none": None,
    "vjepa2-ssv2": (16, 4, 2, 3),
    "vjepa2-k400": (16, 4, 8, 3),
    "vjepa2-diving48": (32, 2, 4, 3),
}
#: Meta's evaluation crop; a 384-pixel encoder evaluates at its own pre-training crop
PRESET_CROP = 256


def preset_values(name: str, crop: int | None = None, where: str = "--eval_preset") -> dict:
    """The flag values evaluation preset ``name`` sets, at the model's pre-training ``crop``
    (None: 256); they lie over the recipe's and under a ``--config`` file's and the flags'."""
    if name not in EVAL_PRESETS:
        raise ValueError(f"{where} {name!r} is not a preset; choose one of "
                         f"{', '.join(EVAL_PRESETS)}")  # fmt: skip
    geometry = EVAL_PRESETS[name]
    if geometry is None:
        return {}
    frames, step, segments, crops = geometry
    crop = crop or PRESET_CROP
    return {
        "num_frames": frames, "sampling_rate": step, "sampling": "dense",
        "test_num_segment": segments, "test_num_crop": crops,
        "input_size": crop, "short_side_size": crop,
    }  # fmt: skip


def recipe_values(name: str, where: str = "--recipe") -> dict[str, Any]:
    """The flag values of recipe ``name``; a one-line error lists the recipes."""
    if name not in RECIPES:
        raise ValueError(f"{where} {name!r} is not a recipe; choose one of {', '.join(RECIPES)}")
    return dict(RECIPES[name])


def inert_flag_notes(values: dict[str, Any]) -> list[str]:
    """One line per inert flag of ``values`` (a run's flat options) that is not the
    reference's default."""
    notes = []
    for flag, (default, why) in INERT_FLAGS.items():
        value = values.get(flag, default)
        if value != default:
            notes.append(f"--{flag} {value} has no effect: {why}")
    return notes


def recipe_summary(values: dict[str, Any]) -> str:
    """``recipe NAME: opt=sgd lr=0.1 ...``: every value that shapes training, for the log."""
    shown = " ".join(f"{k}={values[k]}" for k in RECIPE_FLAGS if k in values)
    mix = "on" if mixup_active(values) else "off (loss: label-smoothed cross-entropy)"
    return f"recipe {values.get('recipe', 'reference')}: {shown}; mixup/cutmix {mix}"


def mixup_active(values: dict[str, Any]) -> bool:
    """The reference's rule: mixup or cutmix alpha > 0, or a cutmix box range given."""
    return values["mixup"] > 0 or values["cutmix"] > 0 or values["cutmix_minmax"] is not None
