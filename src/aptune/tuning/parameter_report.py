"""Trainable / total parameter counts, per group, as a table users read at start."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from aptune.tuning.base import HEAD_PREFIXES

#: dotted-name component prefix -> group label
_GROUPS = (
    ("prompt_", "apt prompts"),
    ("vpt_", "vpt prompts"),
    ("adapter_", "adapters"),
    ("lora_", "lora"),
)


#: the head's row: VideoMAE's (and V-JEPA 2's linear) head, or the attentive one
LINEAR_HEAD = "head (fc_norm + head)"
ATTENTIVE_HEAD = "head (pooler + head)"


def group_of(name: str, head_label: str = LINEAR_HEAD) -> str:
    for prefix, label in _GROUPS:
        if any(part.startswith(prefix) for part in name.split(".")):
            return label
    if name.startswith(HEAD_PREFIXES):
        return head_label
    return "backbone"


@dataclass
class ParameterReport:
    """Counts of a model's parameters; ``backbone_total`` excludes head and method tensors."""

    total: int = 0
    trainable: int = 0
    groups: dict[str, tuple[int, int]] = field(default_factory=dict)  # label -> (trainable, total)

    @property
    def backbone_total(self) -> int:
        return self.groups.get("backbone", (0, 0))[1]

    @property
    def trainable_percent(self) -> float:
        """Trainable share of the backbone's size, the figure papers quote."""
        return 100.0 * self.trainable / max(self.backbone_total, 1)

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "trainable_percent_of_backbone": round(self.trainable_percent, 4),
            "groups": {k: {"trainable": t, "total": n} for k, (t, n) in self.groups.items()},
        }

    def __str__(self) -> str:
        rows = [f"{'group':<24}{'trainable':>14}{'total':>14}"]
        for label, (t, n) in self.groups.items():
            rows.append(f"{label:<24}{t:>14,}{n:>14,}")
        rows.append(f"{'all':<24}{self.trainable:>14,}{self.total:>14,}")
        rows.append(f"trainable: {self.trainable_percent:.3f}% of the backbone's parameters")
        return "\n".join(rows)


def parameter_report(model: nn.Module) -> ParameterReport:
    report = ParameterReport()
    head = ATTENTIVE_HEAD if getattr(model, "pooler", None) is not None else LINEAR_HEAD
    for name, param in model.named_parameters():
        n = param.numel()
        t = n if param.requires_grad else 0
        label = group_of(name, head)
        old_t, old_n = report.groups.get(label, (0, 0))
        report.groups[label] = (old_t + t, old_n + n)
        report.total += n
        report.trainable += t
    return report
