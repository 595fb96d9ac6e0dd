"""Learning-rate schedules stepped every optimizer step (``interval: step``)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_factor: float = 0.0) -> LambdaLR:
    """Linear warm-up for ``warmup_steps``, then cosine decay to ``min_factor`` x the base rate at
    ``total_steps``. The Lightning module fills ``total_steps`` from the trainer."""
    if total_steps < 1:
        raise ValueError(f"cosine schedule needs total_steps >= 1, got {total_steps}")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int = 0) -> LambdaLR:
    """No decay (``total_steps`` is accepted and ignored, for a uniform factory signature)."""
    return LambdaLR(optimizer, lambda step: 1.0)
