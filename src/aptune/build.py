"""``aptune.build_model``: the one entry point for Python users.

Keyword names equal the reference's flags (``prompt_num_tokens``, ``input_size``,
``model_key`` ...), so a launch script translates to Python one to one. Order matters and
is fixed here: build the backbone, attach the method's tensors, load the checkpoint
(which may hold those tensors too), then decide what trains.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aptune.models.sizes import is_vjepa2
from aptune.models.vit import AttnImpl, VisionTransformer, create_vit
from aptune.tuning import (
    attach_methods,
    mark_trainable,
    parameter_report,
    parse_transfer_type,
    registered_prefixes,
)

log = logging.getLogger("aptune")


def build_model(
    model: str | None = "vit_base_patch16_224",
    num_classes: int = 400,
    transfer_type: str = "prompt",
    prompt_num_tokens: int = 2,
    prompt_start: int = 0,
    prompt_end: int | None = None,
    prompt_dropout: float = 0.0,
    prompt_reparam: bool = False,
    num_frames: int | None = None,
    input_size: int | None = None,
    tubelet_size: int | None = None,
    drop_path: float = 0.0,
    fc_drop_rate: float = 0.0,
    init_scale: float = 0.001,
    checkpoint: str | Path | None = None,
    model_key: str = "model|module",
    model_prefix: str = "",
    drop: float = 0.0,
    attn_drop_rate: float = 0.0,
    attn_impl: AttnImpl = "sdpa",
    cos_attn: bool | None = None,
    use_checkpoint: bool = False,
    verbose: bool = False,
    finetune: str | Path | None = None,
    head: str | None = None,
    head_checkpoint: str | Path | None = None,
    **method_options: Any,
) -> VisionTransformer:
    """Build a VideoMAE ViT with a tuning method, optionally from a checkpoint.

    ``checkpoint`` (or the reference's name ``finetune``) may be a VideoMAE pre-trained or
    fine-tuned ``.pth``, a reference APT checkpoint, a DeepSpeed folder, a Hugging Face
    VideoMAE folder or Hub id (``ORG/NAME``, ``ORG/NAME@REVISION``, ``hf://ORG/NAME``; a
    local path of the same name wins) or an aptune ``.safetensors`` file. For a Hugging Face
    folder the architecture (width, depth, heads, patch, norm eps, tubelet) comes from its
    ``config.json``; ``num_frames``/``input_size`` default to the checkpoint's and
    otherwise to 16/224. ``cos_attn`` (VideoMAE V2's cosine attention): ``None`` turns it
    on when the checkpoint has ``attn.scale`` keys. ``model_prefix`` keeps only the
    checkpoint keys under that prefix, stripped (the reference's ``--model_prefix``).
    ``drop`` (after the position embedding, every attention projection and MLP) and
    ``attn_drop_rate`` (on the attention probabilities) are the reference's dropouts.
    ``use_checkpoint`` recomputes block activations in backward instead of keeping them
    (the reference's ``--use_checkpoint``; ``model.set_grad_checkpointing()`` toggles it).
    Extra keyword options go to the methods by their flag names (``lora_rank=8`` ...).
    Returns the model in train mode with ``requires_grad`` set for the method.

    ``vjepa2_*`` names build Meta's V-JEPA 2 encoders (``models/vjepa2.py``) from Meta's
    ``.pt`` files (``model_key`` ``target_encoder`` by default, or ``encoder``), Hugging Face
    ``VJEPA2Model`` / ``VJEPA2ForVideoClassification`` folders or Hub ids, or aptune's
    files; ``head`` is ``attentive`` (Meta's attentive classifier, their default) or
    ``linear`` (mean pooling, LayerNorm, linear: VideoMAE's head, the only one it has);
    ``head_checkpoint`` is a Meta attentive-probe file for the head.
    """
    if is_vjepa2(model):
        return _build_vjepa2(
            model, num_classes=num_classes, transfer_type=transfer_type,
            num_frames=num_frames, input_size=input_size, tubelet_size=tubelet_size,
            checkpoint=checkpoint if checkpoint is not None else finetune,
            model_key=model_key, model_prefix=model_prefix, verbose=verbose,
            head=head or "attentive", head_checkpoint=head_checkpoint,
            method_options=dict(
                prompt_num_tokens=prompt_num_tokens, prompt_start=prompt_start,
                prompt_end=prompt_end, prompt_dropout=prompt_dropout,
                prompt_reparam=prompt_reparam, **method_options,
            ),
            drop_path=drop_path, fc_drop_rate=fc_drop_rate, init_scale=init_scale, drop=drop,
            attn_drop_rate=attn_drop_rate, attn_impl=attn_impl, use_checkpoint=use_checkpoint,
        )  # fmt: skip
    if head not in (None, "linear") or head_checkpoint is not None:
        raise ValueError(
            f"--head attentive / --head_checkpoint are for V-JEPA 2 models (vjepa2_*); {model} "
            "has VideoMAE's head (--head linear: mean pooling, fc_norm, linear)"
        )
    if checkpoint is not None and finetune is not None and str(checkpoint) != str(finetune):
        raise ValueError("give the checkpoint once: either checkpoint= or finetune=")
    checkpoint = checkpoint if checkpoint is not None else finetune
    if checkpoint in ("", None):
        checkpoint = None
    options = dict(
        prompt_num_tokens=prompt_num_tokens,
        prompt_start=prompt_start,
        prompt_end=prompt_end,
        prompt_dropout=prompt_dropout,
        prompt_reparam=prompt_reparam,
        **method_options,
    )
    configs = parse_transfer_type(transfer_type, options)
    random_init = any(c.name == "random" for c in configs)
    if checkpoint is not None and random_init:
        log.warning(
            "transfer_type random trains from random initialisation: ignoring checkpoint %s",
            checkpoint,
        )
    raw: dict | None = None
    info: dict[str, Any] = {}
    arch: dict[str, Any] = {}
    from aptune.models.checkpoint_io import is_hf_folder

    # random init ignores the checkpoint, but keeps a local HF folder's architecture
    if checkpoint is not None and (not random_init or is_hf_folder(checkpoint)):
        from aptune.models.checkpoint_io import read_checkpoint, resolve_checkpoint_path
        from aptune.models.convert import uses_cos_attn
        from aptune.models.hf_config import read_hf_config

        folder, kind = resolve_checkpoint_path(checkpoint)  # a Hub id -> its cached snapshot
        if kind == "hf":
            hf = read_hf_config(folder)
            keys = ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size", "in_chans")
            arch = {k: hf[k] for k in (*keys, "norm_eps", "qkv_bias") if k in hf}
            num_frames = num_frames or hf.get("num_frames")
            input_size = input_size or hf.get("img_size")
            tubelet_size = tubelet_size or hf.get("tubelet_size")
            log.info("architecture of %s read from its config.json", checkpoint)
        if not random_init:
            raw, info = read_checkpoint(folder, model_key)
            if model_prefix:
                from aptune.models.convert import select_prefix

                raw = select_prefix(raw, model_prefix, str(checkpoint))
            info["source"] = str(checkpoint)
            if cos_attn is None and uses_cos_attn(raw):
                cos_attn = True
                log.info("%s has cosine attention (attn.scale): cos_attn on", checkpoint)
    net = create_vit(
        model or "vit_base_patch16_224",
        num_classes=num_classes,
        num_frames=num_frames or 16,
        img_size=input_size or 224,
        tubelet_size=tubelet_size or 2,
        drop_path=drop_path,
        drop=drop,
        attn_drop_rate=attn_drop_rate,
        fc_drop_rate=fc_drop_rate,
        init_scale=init_scale,
        attn_impl=attn_impl,
        cos_attn=bool(cos_attn),
        use_checkpoint=use_checkpoint,
        **arch,
    )
    attach_methods(net, configs)
    if raw is not None:
        from aptune.models.convert import load_state

        load_report = load_state(net, raw, info, registered_prefixes())
        del raw  # a giant checkpoint is 4 GB: free it before training starts
        head = ""
        if load_report.head_reset and load_report.file_classes:
            head = (
                f"; the checkpoint's {load_report.file_classes}-class head re-initialised for "
                f"{num_classes} classes (pass --nb_classes {load_report.file_classes} to keep it)"
            )
        elif load_report.head_reset:
            head = f"; head initialised for {num_classes} classes"
        log.info("loaded %s (%s)%s", checkpoint, load_report.format, head)
    mark_trainable(net, configs)
    net.train()
    if verbose:
        print(parameter_report(net))
    return net


def _build_vjepa2(
    name: str,
    num_classes: int,
    transfer_type: str,
    method_options: dict[str, Any],
    checkpoint: str | Path | None,
    head_checkpoint: str | Path | None,
    head: str,
    model_key: str,
    model_prefix: str,
    num_frames: int | None,
    input_size: int | None,
    tubelet_size: int | None,
    verbose: bool,
    **build: Any,
) -> VisionTransformer:
    """``build_model`` for ``vjepa2_*`` names, in the same order: read the files
    (``models/vjepa2_load.py``), build, attach the methods, load, decide what trains."""
    from aptune.models.vjepa2 import create_vjepa2
    from aptune.models.vjepa2_load import load_vjepa2_state, read_vjepa2_sources

    configs = parse_transfer_type(transfer_type, method_options)
    if any(c.name == "random" for c in configs):
        checkpoint = head_checkpoint = None  # random init: no weights read
    src = read_vjepa2_sources(
        name, checkpoint, head_checkpoint, head, model_key, model_prefix, input_size
    )
    arch = dict(src.arch)
    tubelet = arch.pop("tubelet_size", None)
    net = create_vjepa2(
        name, num_classes=num_classes, num_frames=num_frames or 16, img_size=src.input_size,
        tubelet_size=tubelet_size or tubelet or 2, head=head,  # type: ignore[arg-type]
        **build, **arch,
    )  # fmt: skip
    attach_methods(net, configs)
    if src.state is not None:
        missing = load_vjepa2_state(net, src.state, src.where, registered_prefixes())
        log.info("loaded %s into %s (%d tensors kept their init)", src.where, name, len(missing))
        if src.class_names and len(src.class_names) == num_classes and "head.weight" in src.state:
            net.class_names = src.class_names  # a Hugging Face classifier's labels, head kept
    mark_trainable(net, configs)
    net.train()
    if verbose:
        print(parameter_report(net))
    return net
