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

from aptune.models.vit import AttnImpl, VisionTransformer, create_vit
from aptune.tuning import attach_methods, mark_trainable, parameter_report, parse_transfer_type

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
    attn_impl: AttnImpl = "sdpa",
    verbose: bool = False,
    finetune: str | Path | None = None,
    **method_options: Any,
) -> VisionTransformer:
    """Build a VideoMAE ViT with a tuning method, optionally from a checkpoint.

    ``checkpoint`` (or the reference's name ``finetune``) may be a VideoMAE pre-trained or
    fine-tuned ``.pth``, a reference APT checkpoint, a DeepSpeed folder, a Hugging Face
    VideoMAE folder or an aptune ``.safetensors`` file. For a Hugging Face folder the
    architecture (width, depth, heads, norm eps, tubelet) comes from its ``config.json``;
    ``num_frames``/``input_size`` default to the checkpoint's and otherwise to 16/224.
    Extra keyword options go to the methods by their flag names (``lora_rank=8`` ...).
    Returns the model in train mode with ``requires_grad`` set for the method.
    """
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
    arch: dict[str, Any] = {}
    if checkpoint is not None:
        from aptune.models.hf_config import is_hf_folder, read_hf_config

        if is_hf_folder(checkpoint):
            hf = read_hf_config(checkpoint)
            arch = {k: hf[k] for k in ("embed_dim", "depth", "num_heads", "mlp_ratio") if k in hf}
            arch.update({k: hf[k] for k in ("norm_eps", "qkv_bias") if k in hf})
            num_frames = num_frames or hf.get("num_frames")
            input_size = input_size or hf.get("img_size")
            tubelet_size = tubelet_size or hf.get("tubelet_size")
            log.info("architecture of %s read from its config.json", checkpoint)
    net = create_vit(
        model or "vit_base_patch16_224",
        num_classes=num_classes,
        num_frames=num_frames or 16,
        img_size=input_size or 224,
        tubelet_size=tubelet_size or 2,
        drop_path=drop_path,
        fc_drop_rate=fc_drop_rate,
        init_scale=init_scale,
        attn_impl=attn_impl,
        **arch,
    )
    attach_methods(net, configs)
    if checkpoint is not None:
        if any(c.name == "random" for c in configs):
            log.warning(
                "transfer_type random trains from random initialisation: ignoring checkpoint %s",
                checkpoint,
            )
        else:
            from aptune.models.convert import load_pretrained

            load_report = load_pretrained(net, checkpoint, model_key=model_key)
            log.info(
                "loaded %s (%s)%s",
                checkpoint,
                load_report.format,
                f"; head re-initialised for {num_classes} classes"
                if load_report.head_reset
                else "",
            )
    mark_trainable(net, configs)
    net.tuning_configs = configs  # type: ignore[attr-defined]
    net.train()
    if verbose:
        print(parameter_report(net))
    return net
