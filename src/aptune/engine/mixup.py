"""Mixup / CutMix for video clips, with label smoothing folded into the soft targets.

timm's image Mixup cuts boxes on the last two dims of the first index pair it finds; on
(B, C, T, H, W) video that would cut across time and height. Here the box is spatial
(H, W) and spans every frame, and mixup mixes whole clips.
"""

from __future__ import annotations

import numpy as np
import torch


def one_hot_smooth(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return out.scatter_(1, labels[:, None], 1.0 - smoothing + off)


class VideoMixup:
    """Batch-mode mixup/cutmix with the reference's switches and probabilities.

    ``cutmix_minmax = (lo, hi)`` draws the box sides as uniform fractions of the frame in
    [lo, hi) and places the box wholly inside it (timm's rule); cutmix is then on with
    alpha 1 whatever ``cutmix_alpha`` says, and lambda is the area actually kept.
    """

    def __init__(
        self,
        mixup_alpha: float = 0.8,
        cutmix_alpha: float = 1.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        label_smoothing: float = 0.1,
        num_classes: int = 1000,
        rng: np.random.Generator | None = None,
        cutmix_minmax: tuple[float, float] | list[float] | None = None,
    ) -> None:
        self.cutmix_minmax = tuple(cutmix_minmax) if cutmix_minmax is not None else None
        if self.cutmix_minmax is not None:
            cutmix_alpha = 1.0
        self.mixup_alpha, self.cutmix_alpha = mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob = prob, switch_prob
        self.smoothing, self.num_classes = label_smoothing, num_classes
        self.rng = rng or np.random.default_rng()

    @property
    def active(self) -> bool:
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    def _params(self) -> tuple[float, bool]:
        if self.rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha <= 0 or self.rng.random() < self.switch_prob
        )
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def _box(self, H: int, W: int, lam: float) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of the pasted region: sized by lambda and centred anywhere
        (clipped at the borders), or sized within ``cutmix_minmax`` and wholly inside."""
        if self.cutmix_minmax is not None:
            lo, hi = self.cutmix_minmax
            ch = int(self.rng.integers(int(H * lo), max(int(H * hi), int(H * lo) + 1)))
            cw = int(self.rng.integers(int(W * lo), max(int(W * hi), int(W * lo) + 1)))
            y0 = int(self.rng.integers(0, max(H - ch, 1)))
            x0 = int(self.rng.integers(0, max(W - cw, 1)))
            return y0, y0 + ch, x0, x0 + cw
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(H * cut), int(W * cut)
        cy, cx = int(self.rng.integers(H)), int(self.rng.integers(W))
        y0, y1 = np.clip(cy - ch // 2, 0, H), np.clip(cy + ch // 2, 0, H)
        x0, x1 = np.clip(cx - cw // 2, 0, W), np.clip(cx + cw // 2, 0, W)
        return int(y0), int(y1), int(x0), int(x1)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, C, T, H, W), y: (B,) -> mixed x and soft targets (B, classes)."""
        lam, use_cutmix = self._params()
        if lam < 1.0:
            flipped = x.flip(0)
            if use_cutmix:
                H, W = x.shape[-2:]
                y0, y1, x0, x1 = self._box(H, W, lam)
                x = x.clone()
                x[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
                lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (H * W)  # the area actually cut
            else:
                x = x * lam + flipped * (1.0 - lam)
        t = one_hot_smooth(y, self.num_classes, self.smoothing)
        return x, t * lam + t.flip(0) * (1.0 - lam)


def soft_target_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * torch.log_softmax(logits.float(), dim=-1), dim=-1).mean()
