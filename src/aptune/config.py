"""The run configuration: typed sections, the reference's defaults, YAML in and out.

Every option keeps the name of the reference ``run_class_apt.py`` flag users know
(``lr``, ``opt``, ``mixup``, ``prompt_num_tokens`` ...), and a value not given means what
it means there. :class:`RunConfig` groups them in sections (``model``, ``methods``, ``data``,
``optim``, ``job``); ``config.yaml`` in a run folder is :meth:`RunConfig.to_yaml` (flat
flag names, so files of earlier versions still load), and :meth:`RunConfig.from_yaml` reads
it back, refusing unknown keys by name. The command line (``aptune.cli``) is one way to
fill a RunConfig; Python users build one directly::

    cfg = RunConfig.from_values({"data_path": "lists", "nb_classes": 2, "output_dir": "runs/a"})
    aptune.train(cfg)

Field metadata carries each flag's help text and command-line form; ``aptune.cli``
generates the parser from it, so there is one declaration per option.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aptune.recipes import EVAL_PRESETS, RECIPES, preset_values, recipe_values

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


def section_of(name: str) -> str | None:
    """The section holding option ``name`` (``lr`` -> ``optim``); ``methods`` for a method
    option; None for an unknown name."""
    for section, cls in SECTIONS.items():
        if name in {f.name for f in dataclasses.fields(cls)}:
            return section
    from aptune.tuning.options import method_flags

    return "methods" if name in method_flags() else None


@dataclass
class RunConfig:
    """One training or evaluation run, every option typed and named as the reference's flag.

    ``methods`` holds the tuning methods' options by flag name (``prompt_num_tokens``,
    ``lora_rank``; see :func:`aptune.tuning.options.method_flags`); unset ones take the
    method's default. ``source`` is the file the values came from, if any (not saved).
    """

    model: ModelOptions = field(default_factory=ModelOptions)
    methods: dict[str, Any] = field(default_factory=lambda: default_method_options())
    data: DataOptions = field(default_factory=DataOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    job: JobOptions = field(default_factory=JobOptions)
    source: str | None = None

    # -- building ----------------------------------------------------------------------
    @classmethod
    def from_values(cls, values: dict[str, Any], where: str = "config") -> RunConfig:
        """A validated config from flat option values (section mappings are accepted too);
        the ``recipe`` they name sets its values first, the ``eval_preset`` its own over
        them, the given ones override both."""
        flat = _flatten(values, where)
        recipe = flat.get("recipe", "reference")
        preset = flat.get("eval_preset", "none")
        crop = _vjepa2_crop(str(flat.get("model", ModelOptions.model)))
        try:
            merged = {**recipe_values(recipe, f"{where}: recipe"),
                      **preset_values(preset, crop, f"{where}: eval_preset"), **flat}
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        cfg = cls()
        cfg.update(merged, where)
        return cfg.validate()

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None
    ) -> RunConfig:
        """A config file (``config.yaml`` of a run, or one written by hand), then
        ``overrides`` on top; unknown keys are refused by name."""
        values = load_yaml(path)
        cfg = cls.from_values({**values, **(overrides or {})}, f"--config {path}")
        cfg.source = str(path)
        return cfg

    def update(self, values: dict[str, Any], where: str = "config") -> None:
        """Set options by flag name (no validation: call :meth:`validate` after)."""
        from aptune.tuning.options import coerce_option, method_flags

        flags = method_flags()
        unknown = sorted(k for k in values if section_of(k) is None)
        if unknown:
            raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}")
        for key, value in values.items():
            section = section_of(key)
            if section == "methods":
                self.methods[key] = coerce_option(flags[key], value, where)
            else:
                setattr(getattr(self, section), key, _as_field_type(section, key, value, where))

    def replace(self, **values: Any) -> RunConfig:
        """A validated copy with some options changed by flag name."""
        copy = RunConfig.from_values(self.to_dict())
        copy.update(values)
        return copy.validate()

    # -- checks and derived values -------------------------------------------------------
    def validate(self) -> RunConfig:
        """Derived values and cross-option checks; every error names the flag."""
        m, d, o, j = self.model, self.data, self.optim, self.job
        if o.bf16:
            o.precision = "bf16"
        if o.batch_size_val is None:
            o.batch_size_val = o.batch_size
        if j.log_dir is None and j.output_dir:
            j.log_dir = str(Path(j.output_dir) / "tb")
        for name, value in (("batch_size", o.batch_size), ("epochs", o.epochs),
                            ("update_freq", o.update_freq), ("num_frames", m.num_frames),
                            ("input_size", m.input_size), ("nb_classes", d.nb_classes),
                            ("save_ckpt_freq", j.save_ckpt_freq), ("keep_ckpts", j.keep_ckpts),
                            ("log_every", j.log_every),
                            ("batch_size_val", o.batch_size_val)):  # fmt: skip
            _require(value >= 1, f"--{name} must be >= 1, got {value}")
        _require(m.num_frames % m.tubelet_size == 0,
                 f"--num_frames {m.num_frames} must be a multiple of --tubelet_size "
                 f"{m.tubelet_size}")  # fmt: skip
        patch = _patch_size(m.model)
        _require(patch is not None, f"--model {m.model!r} is not a model; choose one of "
                 f"{', '.join(_model_names())}")  # fmt: skip
        _require(not patch or m.input_size % patch == 0,
                 f"--input_size {m.input_size} must be a multiple of {patch} (the patch size "
                 f"of {m.model})")  # fmt: skip
        for name in ("drop", "attn_drop_rate", "drop_path", "fc_drop_rate"):
            value = getattr(m, name)
            _require(0.0 <= value < 1.0, f"--{name} must be in [0, 1), got {value}")
        _require(o.opt_betas is None or len(o.opt_betas) == 2,
                 f"--opt_betas needs two numbers, got {o.opt_betas}")  # fmt: skip
        box = o.cutmix_minmax
        _require(box is None or (len(box) == 2 and 0.0 < box[0] < box[1] <= 1.0),
                 f"--cutmix_minmax needs two fractions 0 < MIN < MAX <= 1 of the frame side, "
                 f"got {box}")  # fmt: skip
        _require(j.save_ckpt_steps >= 0, f"--save_ckpt_steps must be >= 0, got "
                 f"{j.save_ckpt_steps}")  # fmt: skip
        _require(j.dist_timeout > 0, f"--dist_timeout must be > 0 seconds, got {j.dist_timeout}")
        _require(len(d.crop_scale) == 2, f"--crop_scale needs two numbers, got {d.crop_scale}")
        _check_head(m)
        return self

    def head_kind(self) -> str | None:
        """``--head`` as ``build_model`` takes it: None (auto: the family's own head)."""
        return None if self.model.head == "auto" else self.model.head

    def merges_tokens(self) -> bool:
        """``--segment_merge`` resolved: True when test segments join as tokens."""
        from aptune.models.sizes import is_vjepa2

        merge = self.data.segment_merge
        return merge == "tokens" or (merge == "auto" and is_vjepa2(self.model.model))

    # -- writing -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Flat ``flag: value`` of every option (what ``config.yaml`` holds), sorted."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        out.update(self.methods)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(out.items())}

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write ``path`` atomically (a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=True))
        os.replace(tmp, path)
        return path

    def method_options(self) -> dict[str, Any]:
        """The methods' options that are set, by flag name (for ``aptune.build_model``)."""
        return {k: v for k, v in self.methods.items() if v is not None}


def default_method_options() -> dict[str, Any]:
    """Every method option by flag name: the method's default unless the reference parser
    gives it another one."""
    from aptune.tuning.options import method_flags

    return {n: REFERENCE_METHOD_DEFAULTS.get(n, f.default) for n, f in method_flags().items()}


def save_config(cfg: RunConfig, folder: str | os.PathLike) -> Path:
    """``folder/config.yaml``."""
    return cfg.to_yaml(Path(folder) / "config.yaml")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML mapping of option names (a leading ``--`` and dashes are forgiven)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc.__class__.__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of flag: value")
    return {str(k).lstrip("-").replace("-", "_"): v for k, v in data.items()}


def _flatten(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Section mappings (``optim: {lr: 0.1}``) become flat names; flat names stay."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in (*SECTIONS, "methods") and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return flat


_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list[float]": list}


def _as_field_type(section: str, name: str, value: Any, where: str = "config") -> Any:
    """``value`` as option ``name``'s declared type (YAML's ints where floats are meant
    become floats, tuples lists); a value of another type is a one-line error."""
    kind = str({f.name: f.type for f in dataclasses.fields(SECTIONS[section])}[name])
    base, optional = kind.removesuffix(" | None"), kind.endswith(" | None")
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and base == "float":
        return float(value)
    value = list(value) if isinstance(value, tuple) else value
    want = _TYPES.get(base)
    wrong = want is not None and (not isinstance(value, want) or (
        want is int and isinstance(value, bool)))  # fmt: skip
    if wrong:
        raise ConfigError(f"{where}: --{name} must be {base}, got {value!r}")
    return value


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _check_head(m: ModelOptions) -> None:
    """``--head attentive`` and ``--head_checkpoint`` exist for V-JEPA 2 only, and
    ``--cos_attn`` for VideoMAE only."""
    from aptune.models.sizes import is_vjepa2

    if is_vjepa2(m.model):
        _require(not m.cos_attn, f"--cos_attn is VideoMAE V2's cosine attention; {m.model} "
                 "uses scaled dot-product attention: drop --cos_attn")  # fmt: skip
        _require(not (m.head == "linear" and m.head_checkpoint),
                 f"--head_checkpoint {m.head_checkpoint} is an attentive probe; drop it or use "
                 "--head attentive")  # fmt: skip
        return
    _require(m.head != "attentive", f"--head attentive is for V-JEPA 2 models (vjepa2_*); "
             f"{m.model} has VideoMAE's head: use --head linear or auto")  # fmt: skip
    _require(not m.head_checkpoint, f"--head_checkpoint is for V-JEPA 2 models (vjepa2_*); "
             f"{m.model} has VideoMAE's head: drop --head_checkpoint")  # fmt: skip


def _vjepa2_crop(model: str) -> int | None:
    """The pre-training crop of a V-JEPA 2 / 2.1 size (256 or 384); None for other or
    unknown names (validation names an unknown one)."""
    from aptune.models.sizes import VJEPA2_INPUT_SIZES, full_name

    try:
        return VJEPA2_INPUT_SIZES.get(full_name(model))
    except ValueError:
        return None


def _model_names() -> list[str]:
    from aptune.models.vit import MODEL_SIZES

    return list(MODEL_SIZES)


def _patch_size(model: str) -> int | None:
    """Patch size of a named model (16, or 14 for ViT-g); None for names build_model rejects."""
    from aptune.models.vit import model_spec

    try:
        return int(model_spec(model)["patch_size"])
    except ValueError:
        return None  # build_model names the unknown model with the choices
