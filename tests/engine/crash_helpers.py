"""Test-only pieces for crash-safety tests: a criterion that turns NaN on cue and a callback that freezes a run.

Both are wired in through hydra overrides, so the runs under test go through the real config path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from toy_task import ToyCriterion, ToyModel


class DropoutToyModel(ToyModel):
    """``ToyModel`` with dropout, so that training draws from the global torch generator."""

    def __init__(self, dim: int = 8, hidden: int = 32, p: float = 0.2) -> None:
        super().__init__(dim, hidden)
        self.mlp.insert(2, nn.Dropout(p))


class NaNAtCriterion(ToyCriterion):
    """``ToyCriterion`` whose ``term`` is NaN on the training calls numbered in ``steps`` (0-based).

    With one optimizer step per batch, training call k is global step k.
    """

    def __init__(self, steps: Sequence[int] = (), term: str = "loss_dice") -> None:
        super().__init__()
        self.steps = set(steps)
        self.term = term
        self.calls = 0

    def forward(self, out: Any, batch: Any) -> dict[str, Tensor]:
        terms = super().forward(out, batch)
        if self.training:
            if self.calls in self.steps:
                terms[self.term] = terms[self.term] * torch.tensor(float("nan"))
            self.calls += 1
        return terms


class FreezeAtStep(Callback):
    """After global step ``step``, writes ``marker`` and sleeps: the test kills the frozen process from outside."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.seconds = seconds

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == self.step:
            self.marker.write_text(str(self.step))
            time.sleep(self.seconds)


class AssertUpdatesOnlyOutside(Callback):
    """Fails the run unless the weights stay unchanged exactly on the global steps in ``steps``."""

    def __init__(self, steps: Sequence[int]) -> None:
        self.steps = set(steps)
        self.before: list[Tensor] = []
        self.step = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.step = trainer.global_step
        self.before = [p.detach().clone() for p in pl_module.parameters()]

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        unchanged = all(torch.equal(a, p) for a, p in zip(self.before, pl_module.parameters()))
        if unchanged != (self.step in self.steps):
            raise AssertionError(f"global step {self.step}: weights {'un' if unchanged else ''}changed")
