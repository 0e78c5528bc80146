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

from aptune.config.sections import (
    REFERENCE_METHOD_DEFAULTS,
    SECTIONS,
    ConfigError,
    DataOptions,
    JobOptions,
    ModelOptions,
    OptimOptions,
)
from aptune.recipes import preset_values, recipe_values


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


__all__ = [
    "REFERENCE_METHOD_DEFAULTS",
    "SECTIONS",
    "ConfigError",
    "DataOptions",
    "JobOptions",
    "ModelOptions",
    "OptimOptions",
    "RunConfig",
    "default_method_options",
    "load_yaml",
    "save_config",
    "section_of",
]
