"""Every random stream of a run, derived from ``--seed`` in one place.

Each stream depends only on the run's seed and on where it is used (process rank, epoch,
position in the epoch), never on what ran before: a resumed run, another ``--num_workers``
or another process draws exactly what an uninterrupted run draws. The multipliers are
distinct primes so that neighbouring (epoch, rank, position) triples never share a seed;
they are part of what a run's results depend on and must not change.
"""

from __future__ import annotations


def process_seed(seed: int, rank: int) -> int:
    """The global generators of a process before training starts."""
    return seed + rank


def epoch_process_seed(seed: int, rank: int, epoch: int) -> int:
    """The global generators (dropout, drop-path) at the start of ``epoch``."""
    return seed + rank + 7_919 * (epoch + 1)


def mixup_seed(seed: int, epoch: int, rank: int) -> int:
    """Mixup / cutmix draws of ``epoch`` on ``rank``."""
    return seed * 1_000_003 + epoch * 31 + rank


def loader_order_seed(seed: int, epoch: int, rank: int) -> int:
    """The DataLoader's generator (sampling order without DDP) for ``epoch``."""
    return seed * 100_003 + epoch * 7_919 + rank


def item_epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The base of every training item's augmentation seed in ``epoch``."""
    return (seed * 100_003 + epoch) * 131 + rank


def item_seed(epoch_seed: int, position: int) -> int:
    """A training item's augmentation: from its position in the epoch's order only."""
    return (epoch_seed * 1_000_003 + position * 7_919 + 17) % 2**63


def device_augment_seed(seed: int, rank: int) -> int:
    """The erasing noise of augmentation on the training device."""
    return seed * 1_009 + rank


def mask_seed(seed: int, epoch: int, rank: int) -> int:
    """Pre-training's masks of ``epoch`` on ``rank``."""
    return seed * 1_000_003 + epoch * 104_729 + rank
