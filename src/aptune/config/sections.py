"""The run configuration's sections: every option with its default, help and command-line form.

One dataclass per section (``model``, ``data``, ``optim``, ``job``; method options live in
the tuning registry), each field declared once with :func:`option`, from which
``aptune.cli`` generates the parser. :class:`aptune.config.RunConfig` groups them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aptune.recipes import EVAL_PRESETS, RECIPES

DATA_SETS = ("Kinetics-400", "SSV2", "UCF101", "HMDB51", "image_folder")
#: the reference parser's defaults for method options where they differ from the method's
#: own (``prompt_start`` None means the first block, as the method's 0)
REFERENCE_METHOD_DEFAULTS: dict[str, Any] = {"prompt_num_tokens": 5, "prompt_start": None}


class ConfigError(ValueError):
    """A flag or config-file value that cannot work; the message names it."""


def option(default: Any, help: str, **cli: Any) -> Any:
    """A configuration field: its default, help text and command-line form (``choices``,
    ``aliases``, ``negatable`` for a ``--no_x`` twin, ``nargs``, ``type``)."""
    meta = {"help": help, **cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ModelOptions:
    """The backbone, how it is built, and which checkpoint it starts from."""

    model: str = option("vit_base_patch16_224",
                     "backbone: VideoMAE vit_{nano,micro,tiny,small,base,large,huge}_patch16_224, "
                     "vit_giant_patch14_224; V-JEPA 2 vjepa2_vit_{large,huge,giant}_patch16_256, "
                     "vjepa2_vit_giant_patch16_384 (vjepa2_vit_{nano,micro}_patch16_256: tiny "
                     "test sizes); V-JEPA 2.1 "
                     "vjepa2_1_vit_{base,large,giant,gigantic}_patch16_384 "
                     "(vjepa2_1_vit_nano_patch16_384: tiny)")
    transfer_type: str = option("prompt", "prompt (APT) | linear | end2end | random | "
                             "vpt_shallow | vpt_deep | adapter | lora | bitfit; combine with '+'")
    input_size: int = option(224, "frame crop size in pixels (V-JEPA 2's crop is 256, 384 for "
                          "vjepa2_vit_giant_patch16_384 and V-JEPA 2.1; --eval_preset sets it)")
    num_frames: int = option(16, "frames per clip")
    tubelet_size: int = option(2, "frames per patch token")
    fc_drop_rate: float = option(0.0, "dropout before the head")
    drop: float = option(0.0, "dropout after the position embedding, each attention "
                      "projection and each MLP")
    attn_drop_rate: float = option(0.0, "dropout on the attention probabilities")
    drop_path: float = option(0.0, "stochastic depth rate")
    init_scale: float = option(0.001, "head init multiplier")
    head: str = option("auto", "classifier on the encoder's tokens: attentive = Meta's attentive "
                    "probe (V-JEPA 2 only); linear = mean pooling, LayerNorm, linear (VideoMAE's "
                    "head); auto = attentive for V-JEPA 2, linear otherwise",
                    choices=("auto", "attentive", "linear"))
    head_checkpoint: str = option("", "Meta attentive-probe file (.pt with 'classifiers') to "
                               "start the V-JEPA 2 head from")
    finetune: str = option("", "checkpoint to start from: VideoMAE v1/V2 .pth, reference APT "
                        ".pth, DeepSpeed folder, Hugging Face folder or Hub id (ORG/NAME[@REV], "
                        "hf://ORG/NAME), aptune .safetensors or run folder")
    model_key: str = option("model|module", "keys to look under, first wins")
    model_prefix: str = option("", "key prefix of the --finetune weights, stripped on loading")
    use_checkpoint: bool = option(False, "recompute each block's activations in backward "
                                  "instead of keeping them (less memory, ~1.2x the step time)")
    use_mean_pooling: bool = option(True, "mean pooling head (always on, as in VideoMAE)")
    attn_impl: str = option("auto", "attention kernel: auto picks one for the device and dtype; "
                         "sdpa = fused scaled_dot_product_attention; plain = matmul + softmax, "
                         "probabilities kept for backward (most memory); recompute = SDPA's "
                         "forward and a backward recomputing the probabilities with GEMMs",
                         choices=("auto", "sdpa", "plain", "recompute"))
    cos_attn: bool = option(False, "cosine attention (VideoMAE V2; detected from the checkpoint)")
    compile: bool = option(False, "wrap the model in torch.compile")


@dataclass
class DataOptions:
    """Lists, sampling, augmentation, test views and loading."""

    data_set: str = option("Kinetics-400", "selects sampling (SSV2: segments) and flipping "
                        "(not for SSV2)", choices=DATA_SETS)
    data_path: str = option("", "folder with train.csv, val.csv, test.csv")
    eval_data_path: str | None = option(None, "folder with val/test lists", type=str)
    data_root: str = option("", "prefix for relative video paths")
    nb_classes: int = option(400, "number of classes (checked)")
    num_segments: int = option(1, "parsed as in the reference, which never reads it")
    sampling_rate: int = option(4, "frame stride (dense sampling)")
    sampling: str = option("auto", "frame sampling; auto: segment for SSV2, dense otherwise",
                        choices=("auto", "dense", "segment"))
    num_sample: int = option(2, "repeated augmentation per video")
    short_side_size: int = option(224, "test: short side resize")
    test_num_segment: int = option(5, "test clips per video")
    test_num_crop: int = option(3, "test crops per clip")
    segment_merge: str = option("auto", "how a test video's segments combine: softmax = mean of "
                             "the softmax over every segment x crop view; tokens = per crop, the "
                             "segments' tokens concatenated before the head (Meta's V-JEPA 2 "
                             "evaluation), then the mean softmax over crops; auto = tokens for "
                             "V-JEPA 2, softmax otherwise",
                             choices=("auto", "softmax", "tokens"))
    eval_preset: str = option("none", "Meta's V-JEPA 2 evaluation protocol: sets num_frames, "
                           "sampling_rate, sampling dense, test_num_segment, test_num_crop, "
                           "input_size, short_side_size (ssv2: 16x4, 2x3; k400: 16x4, 8x3; "
                           "diving48: 32x2, 4x3; crop 256, or 384 for 384-pixel encoders); "
                           "--config and flags override its values", choices=tuple(EVAL_PRESETS))
    is_aa: bool = option(False, "apply RandAugment (--aa)")
    aa: str = option("rand-m7-n4-mstd0.5-inc1", "timm RandAugment string")
    color_jitter: float = option(0.4, "parsed as in the reference, which never reads it")
    train_interpolation: str = option("bicubic", "resize filter (train)")
    crop_pct: float | None = option(None, "parsed as in the reference, which never reads it",
                                 type=float)
    crop_scale: list[float] = option([0.08, 1.0], "area range of the train random resized crop",
                                  nargs=2, type=float)
    reprob: float = option(0.0, "random erasing probability")
    remode: str = option("pixel", "random erasing fill: pixel|rand|const")
    recount: int = option(1, "random erasing boxes per clip")
    resplit: bool = option(False, "parsed as in the reference, which never reads it")
    imagenet_default_mean_and_std: bool = option(True, "ImageNet mean/std normalisation (always)")
    decoder: str = option("auto", "video decoding backend",
                       choices=("auto", "pyav", "decord", "frames"))
    strict_data: bool = option(False, "fail on the first unreadable training video")
    eval_skip_unreadable: bool = option(False, "exclude validation/test videos that cannot be "
                                        "opened (found at start-up, counted in metrics.json) "
                                        "instead of stopping before the first epoch")
    decode_cache: str | None = option(None, "decode each video once into DIR (raw frames) and "
                                   "read it from there in later epochs and runs", type=str)
    aug_device: str = option("auto", "where training clips are augmented: cpu = in the "
                          "DataLoader workers; cuda = batched on the training GPU; auto = "
                          "the training device", choices=("auto", "cpu", "cuda"))
    num_workers: int = option(10, "data loading processes")
    pin_mem: bool = option(True, "pin host memory for faster GPU transfer", negatable=True)


@dataclass
class OptimOptions:
    """The training recipe: optimiser, schedules, regularisation, precision."""

    recipe: str = option("reference", "named recipe: reference = the reference run_class_apt.py's "
                      "defaults; videomae-finetune = VideoMAE's full fine-tuning recipe; "
                      "--config and flags override its values", choices=tuple(RECIPES))
    batch_size: int = option(16, "clips per process per step")
    batch_size_val: int | None = option(14, "evaluation batch per process", type=int)
    epochs: int = option(100, "training epochs")
    update_freq: int = option(1, "gradient accumulation steps")
    opt: str = option("sgd", "adamw | adam | sgd | momentum")
    opt_eps: float = option(1e-8, "optimizer epsilon (Adam)")
    opt_betas: list[float] | None = option(None, "e.g. 0.9 0.999", nargs="+", type=float)
    momentum: float = option(0.9, "SGD momentum")
    clip_grad: float | None = option(None, "max gradient norm", type=float)
    weight_decay: float = option(1e-3, "weight decay (not on 1-D tensors, biases, pos_embed)")
    weight_decay_end: float | None = option(None, "cosine weight decay target", type=float)
    lr: float = option(0.1, "base lr per 256 samples")
    layer_decay: float = option(1.0, "layer-wise lr decay (1.0: none)")
    head_lr_scale: float = option(1.0, "lr multiplier for the head (fc_norm, head; V-JEPA 2's "
                               "attentive pooler)")
    warmup_lr: float | None = option(None, "lr at the start of warmup, per 256 samples (default: "
                                  "0, as the reference's schedule)", type=float)
    min_lr: float = option(1e-6, "lr at the end of the cosine")
    warmup_epochs: int = option(10, "linear warmup epochs")
    warmup_steps: int = option(-1, "overrides --warmup_epochs if > 0")
    smoothing: float = option(0.1, "label smoothing")
    mixup: float = option(0.0, "mixup alpha (0 = off)")
    cutmix: float = option(0.0, "cutmix alpha (0 = off)")
    cutmix_minmax: list[float] | None = option(None, "cutmix box side range as fractions of the "
                                            "frame (switches cutmix on)", nargs="+", type=float)
    mixup_prob: float = option(0.0, "chance to mix a batch (0: never)")
    mixup_switch_prob: float = option(0.0, "chance of cutmix instead of mixup when both are on")
    mixup_mode: str = option("batch", "one lambda per batch", choices=("batch",))
    model_ema: bool = option(False, "keep an EMA of the weights")
    model_ema_decay: float = option(0.9999, "EMA decay per step")
    model_ema_force_cpu: bool = option(False, "parsed; the EMA stays on the model's device")
    precision: str = option("auto", "auto: bf16 autocast on GPUs with compute capability 8.0+ "
                         "(A100, H100, L4, RTX 30xx+), fp16 autocast with a loss scaler on "
                         "older GPUs (V100, T4), fp32 on CPU; fp32 on a GPU uses TF32 matmuls",
                         choices=("auto", "fp32", "bf16", "fp16"))
    bf16: bool = option(False, "same as --precision bf16 (an error on a GPU without native "
                     "bf16)")


@dataclass
class JobOptions:
    """Where the run writes, how it resumes, how processes cooperate."""

    output_dir: str = option("", "run folder: checkpoints, logs, reports")
    log_dir: str | None = option(None, "TensorBoard folder (default: output_dir/tb)", type=str)
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    seed: int = option(0, "seed: same seed, same run on CPU")
    resume: str = option("", "checkpoint folder to resume from")
    auto_resume: bool = option(True, "resume from the newest complete checkpoint", negatable=True)
    save_ckpt: bool = option(True, "write checkpoints", negatable=True)
    save_ckpt_freq: int = option(10, "checkpoint every N epochs")
    save_ckpt_steps: int = option(0, "also checkpoint every N optimiser steps (0 = off)")
    keep_ckpts: int = option(2, "keep the K newest checkpoints (plus checkpoint-best)")
    start_epoch: int = option(0, "first epoch when not resuming")
    eval: bool = option(False, "only evaluate --finetune/--resume")
    disable_eval_during_finetuning: bool = option(False, "no validation after each epoch")
    dist_eval: bool = option(False, "parsed; under DDP evaluation is always sharded across "
                          "processes (padded duplicates are removed)")
    world_size: int = option(1, "parsed; the launcher decides")
    local_rank: int = option(-1, "set by torch.distributed.launch (torchrun sets LOCAL_RANK)",
                          aliases=("--local-rank",))
    dist_on_itp: bool = option(False, "parsed; the launcher's environment is used")
    dist_url: str = option("env://", "parsed; env:// is used")
    dist_timeout: float = option(300.0, "seconds a rank waits for the others before it stops "
                              "with one line naming what it waited for")
    enable_deepspeed: bool = option(False, "the reference's DeepSpeed recipe on the built-in "
                                 "engine: on a GPU fp16 with a dynamic loss scale from 2^7")
    zero_stage: int = option(0, "parsed; DeepSpeed is not used")
    max_steps_per_epoch: int | None = option(None, "stop each epoch after N steps (smoke tests)",
                                          type=int)
    no_progress: bool = option(False, "no progress bar")
    log_every: int = option(100, "read the training loss and gradient norm from the device "
                         "every N optimiser steps (progress bar, TensorBoard; also at "
                         "checkpoints and each epoch's end); each read waits for the GPU")


SECTIONS: dict[str, type] = {
    "model": ModelOptions, "data": DataOptions, "optim": OptimOptions, "job": JobOptions,
}  # fmt: skip
