"""The options of ``aptune pretrain``: names and defaults of VideoMAE's
``run_mae_pretraining.py``, as one typed, validated dataclass.

Kept free of torch imports: ``aptune --help`` builds the pretrain parser from
:data:`MASK_TYPES` and :data:`DECODERS`, and the validators here are the parser's too,
so a bad value reads the same from the command line and from Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from aptune.config import ConfigError
from aptune.models.sizes import is_vjepa2

MASK_TYPES = ("tube", "random")
DECODERS = ("auto", "pyav", "decord", "frames")
#: options that must be >= 1 (counts and sizes)
POSITIVE = ("decoder_depth", "num_frames", "sampling_rate", "tubelet_size", "input_size",
            "batch_size", "update_freq", "epochs", "save_ckpt_freq")  # fmt: skip


def check_positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"--{name} must be >= 1, got {value}")
    return value


def check_mask_ratio(value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"--mask_ratio must be in [0, 1), got {value}")
    return value


@dataclass(frozen=True)
class PretrainConfig:
    """One pre-training job. ``data_path`` and ``output_dir`` have no default (the
    command line requires them); every other default is VideoMAE's."""

    data_path: str
    output_dir: str
    # model
    model: str = "vit_base_patch16_224"
    decoder_dim: int | None = None  # None: encoder dim / 2
    decoder_depth: int = 4
    decoder_num_heads: int | None = None  # None: decoder_dim // 64 (at least 1)
    mask_ratio: float = 0.9
    mask_type: str = "tube"
    norm_pix_loss: bool = True
    drop_path: float = 0.0
    # data
    data_root: str = ""
    num_frames: int = 16
    sampling_rate: int = 4
    tubelet_size: int = 2
    input_size: int = 224
    min_crop_scale: float = 0.5
    flip: bool = False
    decoder: str = "auto"
    strict_data: bool = False
    num_workers: int = 4
    # optimisation (lr values per 256 samples)
    batch_size: int = 64
    update_freq: int = 1
    epochs: int = 800
    lr: float = 1.5e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    warmup_epochs: int = 40
    warmup_steps: int = -1
    weight_decay: float = 0.05
    opt_betas: tuple[float, float] = (0.9, 0.95)
    opt_eps: float = 1e-8
    clip_grad: float | None = None
    max_steps_per_epoch: int | None = None
    bf16: bool = False
    # run
    log_dir: str | None = None
    seed: int = 0
    device: str = "auto"
    local_rank: int = -1
    auto_resume: bool = True
    save_ckpt_freq: int = 20
    no_progress: bool = False

    def __post_init__(self) -> None:
        for name in POSITIVE:
            check_positive(name, getattr(self, name))
        check_mask_ratio(self.mask_ratio)
        if is_vjepa2(self.model):
            raise ConfigError(f"--model {self.model}: aptune pretrain trains VideoMAE encoders "
                              "(masked pixels); V-JEPA 2 encoders come pre-trained from Meta "
                              "(aptune train --model vjepa2_... --finetune FILE)")
        for name, value, allowed in (("mask_type", self.mask_type, MASK_TYPES),
                                     ("decoder", self.decoder, DECODERS)):  # fmt: skip
            if value not in allowed:
                raise ConfigError(f"--{name} {value!r}: choose from {', '.join(allowed)}")
        if len(self.opt_betas) != 2:
            raise ConfigError(f"--opt_betas takes two values, got {list(self.opt_betas)}")
        object.__setattr__(self, "opt_betas", tuple(self.opt_betas))

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types (what ``config.yaml`` and the checkpoints store)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in sorted(dataclasses.asdict(self).items())}  # fmt: skip


DEFAULTS = {f.name: f.default for f in dataclasses.fields(PretrainConfig)
            if f.default is not dataclasses.MISSING}  # fmt: skip
