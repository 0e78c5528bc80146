"""Optimiser, parameter groups, schedules and EMA: the VideoMAE / BEiT fine-tuning recipe.

The behaviour to match is the reference's (VideoMAE ``optim_factory`` + ``utils``):

* no weight decay for a tensor that is 1-D, whose name ends in ``.bias``, or that the
  model's ``no_weight_decay()`` names (``pos_embed``, ``cls_token``, V2's logit scales);
  every other trainable tensor decays, APT's prompts and ``prompt_scale`` (L, 2, n)
  included;
* layer-wise lr decay: ``lr_scale = layer_decay ** (num_layers + 1 - layer_id)``, with
  ``patch_embed`` at layer 0, ``blocks.i`` at ``i + 1`` and everything else (head,
  ``fc_norm``, ``pooler``, ``kv_prompts``) at ``num_layers + 1`` (scale 1);
* ``lr`` is given per 256 samples and scaled by the caller with :func:`scaled_lr`;
* per-iteration schedules: linear warmup, then half a cosine down to the final value;
  the engine writes ``lr * lr_scale`` into every group each step (:func:`apply_schedules`).

Only parameters with ``requires_grad`` enter the optimiser: with APT the frozen backbone
would otherwise cost an ``if p.grad is None`` per tensor per step and, worse, AdamW state
if anything ever gave it a gradient.
"""

from __future__ import annotations

import copy
import logging
import math
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from aptune.config import ConfigError
from aptune.engine.distributed import unwrap
from aptune.tuning.base import HEAD_PREFIXES

log = logging.getLogger("aptune")

#: top-level names that never get weight decay (the reference model's no_weight_decay())
NO_DECAY_NAMES = ("pos_embed", "cls_token")
#: names assigned to layer 0 (the input side) in layer decay
EMBED_NAMES = ("patch_embed", "pos_embed", "cls_token", "mask_token")
OPTIMIZERS = ("adamw", "adam", "sgd", "momentum")


def num_layers_of(model: nn.Module) -> int:
    """Depth used by layer decay: ``len(model.blocks)`` (0 for a model without blocks)."""
    blocks = getattr(model, "blocks", None)
    return len(blocks) if blocks is not None else 0


def layer_id_for(name: str, num_layers: int) -> int:
    """Layer index of a parameter for layer decay (VideoMAE's ``get_num_layer_for_vit``).

    ``kv_prompts`` hold all blocks' prompts in one (L, n, d) tensor, so they cannot be
    split per block; they sit with the head at ``num_layers + 1`` (scale 1), which is
    also where the reference puts its top-level ``prompt_embeddings``. Method tensors
    living inside a block (adapters, LoRA) follow their block.
    """
    first = name.split(".", 1)[0]
    if first in EMBED_NAMES:
        return 0
    if first == "blocks":
        return int(name.split(".")[1]) + 1
    return num_layers + 1


def _is_no_decay(name: str, param: torch.Tensor, skip: set[str]) -> bool:
    """The reference's rule, exactly: 1-D, ``.bias`` or in the skip set."""
    return param.ndim == 1 or name.endswith(".bias") or name in skip


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    no_decay_names: Iterable[str] = (),
    head_lr_scale: float = 1.0,
) -> list[dict]:
    """Trainable parameters split into (layer, decay / no-decay) groups.

    Every group carries ``weight_decay``, ``lr_scale`` (1.0 without layer decay) and a
    ``name`` such as ``layer_3_decay`` (``decay`` / ``no_decay`` without layer decay) for
    logs. Groups appear in the order their first parameter does in ``named_parameters``,
    so the optimiser state layout is stable across runs of the same model.
    ``head_lr_scale`` != 1 puts the head (``fc_norm``, ``head``, V-JEPA 2's attentive
    ``pooler``) in groups of its own
    (``..._head``) whose ``lr_scale`` is multiplied by it: a PEFT method's few new tensors
    often want a far larger lr than the linear head on top of them.
    """
    model = unwrap(model)
    skip = set(no_decay_names) | set(NO_DECAY_NAMES)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    num_layers = num_layers_of(model)
    use_ld = layer_decay is not None and layer_decay != 1.0
    groups: dict[str, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = _is_no_decay(name, param, skip)
        kind = "no_decay" if no_decay else "decay"
        if use_ld:
            layer_id = layer_id_for(name, num_layers)
            key = f"layer_{layer_id}_{kind}"
            scale = float(layer_decay ** (num_layers + 1 - layer_id))
        else:
            key, scale = kind, 1.0
        if head_lr_scale != 1.0 and name.startswith(HEAD_PREFIXES):
            key, scale = f"{key}_head", scale * float(head_lr_scale)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": 0.0 if no_decay else float(weight_decay),
                "lr_scale": scale,
                "name": key,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


def build_optimizer(
    model: nn.Module,
    opt: str = "adamw",
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    opt_eps: float | None = 1e-8,
    opt_betas: tuple[float, float] | None = None,
    momentum: float = 0.9,
    layer_decay: float | None = None,
    head_lr_scale: float = 1.0,
    fused: bool = False,
) -> torch.optim.Optimizer:
    """An optimiser over :func:`param_groups` with timm's meaning of ``--opt``.

    ``sgd`` is Nesterov SGD (timm's ``sgd``), ``momentum`` plain heavy-ball SGD. ``lr`` is
    the already scaled rate; each group starts at ``lr * lr_scale`` so the optimiser is
    consistent even before the first :func:`apply_schedules`. ``fused``: one kernel per
    step, which also lets fp16's ``GradScaler`` skip a step with inf/NaN gradients on the
    device instead of reading its flag on the host every step.
    """
    name = opt.lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"--opt {opt!r} is not supported; choose one of {', '.join(OPTIMIZERS)}")
    if not head_lr_scale > 0:
        raise ConfigError(f"--head_lr_scale must be > 0, got {head_lr_scale}")
    groups = param_groups(model, weight_decay, layer_decay, head_lr_scale=head_lr_scale)
    if not groups:
        raise ConfigError("the model has no trainable parameters: nothing to optimise")
    for g in groups:
        g["lr"] = lr * g["lr_scale"]
    if name in ("sgd", "momentum"):
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=name == "sgd",
                               fused=fused or None)  # fmt: skip
    kwargs: dict[str, Any] = {"lr": lr, "fused": fused or None}
    if opt_eps is not None:
        kwargs["eps"] = opt_eps
    if opt_betas is not None:
        kwargs["betas"] = tuple(opt_betas)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, **kwargs)


def cosine_schedule(
    base_value: float,
    final_value: float,
    epochs: int,
    niter_per_ep: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
    warmup_steps: int = -1,
) -> np.ndarray:
    """Per-iteration values: linear warmup, then cosine from ``base_value`` to ``final_value``.

    Same numbers as VideoMAE's ``cosine_scheduler``: the warmup is
    ``linspace(start_warmup_value, base_value, W)`` (so its last step already equals
    ``base_value``), and step ``W + i`` of the cosine is
    ``final + (base - final) * (1 + cos(pi * i / C)) / 2`` with ``C`` the cosine length,
    so the last value sits a hair above ``final_value``. Two reference crashes are made
    well defined: ``warmup_steps > 0`` with ``warmup_epochs == 0`` warms up (the reference
    asserts), and a warmup longer than the run is cut at the run's end (with a warning).
    """
    total = int(epochs) * int(niter_per_ep)
    warmup = int(warmup_steps) if warmup_steps > 0 else int(warmup_epochs) * int(niter_per_ep)
    warmup = max(warmup, 0)
    if warmup > total:
        log.warning(
            "warmup (%d iterations) is longer than the run (%d): the lr never reaches its peak",
            warmup,
            total,
        )
    warm = np.linspace(start_warmup_value, base_value, warmup) if warmup else np.zeros(0)
    n_cos = max(total - warmup, 0)
    # math.cos per step, like the reference, so values agree bit for bit
    cos = np.array(
        [
            final_value + 0.5 * (base_value - final_value) * (1 + math.cos(math.pi * i / n_cos))
            for i in range(n_cos)
        ],
        dtype=np.float64,
    )
    schedule = np.concatenate((warm, cos))[:total]
    assert len(schedule) == total
    return schedule


def scaled_lr(lr: float, batch_size: int, update_freq: int, world_size: int) -> float:
    """The reference's linear scaling rule: ``lr`` is per 256 samples of the total batch."""
    return lr * batch_size * update_freq * world_size / 256.0


def apply_schedules(
    optimizer: torch.optim.Optimizer,
    step: int,
    lr_values: Sequence[float] | np.ndarray | None,
    wd_values: Sequence[float] | np.ndarray | None,
) -> None:
    """Write step ``step``'s lr (times each group's ``lr_scale``) and weight decay.

    Weight decay is only written to groups that decay at all (``weight_decay > 0``), so
    biases / norms stay at zero - the reference's rule. Either schedule may be None.
    """
    for group in optimizer.param_groups:
        if lr_values is not None:
            group["lr"] = float(lr_values[step]) * group.get("lr_scale", 1.0)
        if wd_values is not None and group["weight_decay"] > 0:
            group["weight_decay"] = float(wd_values[step])


def clip_gradients(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor | None:
    """Clip the global L2 norm to ``max_norm`` (if given and > 0); return the norm before.

    The norm is returned even without clipping because the engine logs it (as the
    reference's loss scaler does). It is a 0-d tensor on the gradients' device: converting
    it to a number waits for the GPU, which the training loop does only at log points.
    None when no parameter has a gradient. With AMP on a GPU, unscale the gradients
    (``scaler.unscale_``) before calling this.
    """
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return None
    if max_norm is not None and max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
    return torch.nn.utils.get_total_norm([p.grad for p in with_grad])


class ModelEma:
    """Exponential moving average of a model's weights (timm's ``ModelEma`` recipe).

    ``ema = decay * ema + (1 - decay) * model`` for every trainable parameter and every
    floating-point buffer of the state dict, in one ``torch._foreach_lerp_`` per step;
    integer buffers are copied. Frozen parameters (an APT backbone) cannot change, so the
    copy taken here stays exact and is never touched again: a step costs the trainable
    tensors only, not a pass over the whole backbone.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ConfigError(f"--model_ema_decay must be in [0, 1], got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model))
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self._source: weakref.ref | None = None  # the model the pairs below belong to
        self._pairs: tuple[list, list, list, list] = ([], [], [], [])

    def _tracked(self, model: nn.Module) -> tuple[list, list, list, list]:
        """(EMA, model) tensors to average and (EMA, model) integer buffers to copy.

        Built once per model: optimisers and ``load_state_dict`` update tensors in place,
        so the references stay valid for the whole run.
        """
        if self._source is not None and self._source() is model:
            return self._pairs
        params = dict(model.named_parameters())
        src = model.state_dict(keep_vars=True)
        avg_e, avg_m, copy_e, copy_m = [], [], [], []
        for name, ema_v in self.module.state_dict(keep_vars=True).items():
            v = src[name]
            if name in params and not params[name].requires_grad:
                continue  # frozen: equal to the copy taken at construction
            if ema_v.is_floating_point():
                avg_e.append(ema_v.data)
                avg_m.append(v.data)
            else:
                copy_e.append(ema_v.data)
                copy_m.append(v.data)
        self._source, self._pairs = weakref.ref(model), (avg_e, avg_m, copy_e, copy_m)
        return self._pairs

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        avg_e, avg_m, copy_e, copy_m = self._tracked(unwrap(model))
        if avg_e:
            torch._foreach_lerp_(avg_e, avg_m, 1.0 - self.decay)
        for e, v in zip(copy_e, copy_m):
            e.copy_(v)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Make the average equal to ``model`` (a fresh start, e.g. after loading weights)."""
        self.module.load_state_dict(unwrap(model).state_dict())

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], strict: bool = True) -> Any:
        return self.module.load_state_dict(state, strict=strict)
