"""Learning-rate schedules that the stock ``torch.optim.lr_scheduler`` classes do not offer in one piece.

A schedule here is a function ``(optimizer, ...) -> LRScheduler``, configured as a hydra partial. A schedule
with a ``total_steps`` argument left at ``None`` gets the run's length from the engine
(``trainer.estimated_stepping_batches``), so changing ``trainer.max_epochs`` or the data never desynchronises it.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int | None = None,
                  min_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up from ``lr / warmup_steps`` to ``lr`` over ``warmup_steps``, then cosine decay to
    ``min_ratio * lr`` at ``total_steps``; stepped per optimizer step (``scheduler_interval: step``).

    Every parameter group keeps its own base lr (its ``lr_scale`` is preserved).
    """
    if total_steps is None:
        raise ValueError("warmup_cosine needs total_steps (the engine fills it from the trainer)")
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"bad schedule: warmup_steps={warmup_steps}, total_steps={total_steps}, "
                         f"min_ratio={min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(total_steps - warmup_steps, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def poly(optimizer: Optimizer, power: float = 4.0, total_steps: int | None = None, end_ratio: float = 0.0) -> LambdaLR:
    """Polynomial decay ``lr * max(1 - step / total_steps, 0) ** power``, floored at ``end_ratio * lr``.

    MDIN's PolyLR (rgsan-mdin spec §8: power 4, 70 epochs, end value 0) steps once per epoch; configured with
    ``scheduler_interval: epoch`` the engine's ``total_steps`` would be optimizer steps, so give
    ``total_steps`` = the number of epochs there, or use ``scheduler_interval: step`` (decay per step; the
    per-epoch staircase differs by less than one epoch's decay).
    """
    if total_steps is None:
        raise ValueError("poly needs total_steps (the engine fills it from the trainer)")
    if total_steps < 1 or power <= 0 or not 0.0 <= end_ratio <= 1.0:
        raise ValueError(f"bad schedule: total_steps={total_steps}, power={power}, end_ratio={end_ratio}")

    def factor(step: int) -> float:
        return max(max(1.0 - step / total_steps, 0.0) ** power, end_ratio)

    return LambdaLR(optimizer, factor)
