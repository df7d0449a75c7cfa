"""warmup_cosine values, and the engine filling a schedule's total_steps from the trainer."""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import pytest
import torch

from grounding.engine.schedules import warmup_cosine
from grounding.engine.task import GroundingTask


def lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_warmup_then_cosine_by_hand_and_groups_keep_their_scale() -> None:
    p, q = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": 1.0}, {"params": [q], "lr": 0.01}], lr=1.0)
    got = lrs(warmup_cosine(opt, warmup_steps=4, total_steps=12, min_ratio=0.1), 14)
    # steps 0-3 ramp up to the peak, steps 4-12 follow the cosine from the peak to the floor, then it stays there
    expect = [0.25, 0.5, 0.75, 1.0] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(9)]
    expect += [0.1]
    assert [g[0] for g in got] == pytest.approx(expect)
    assert [g[1] for g in got] == pytest.approx([0.01 * e for e in expect])


@pytest.mark.parametrize("kwargs", [{"warmup_steps": -1, "total_steps": 5}, {"warmup_steps": 1, "total_steps": 0},
                                    {"warmup_steps": 1, "total_steps": 5, "min_ratio": 2.0}, {"warmup_steps": 1}])
def test_bad_schedules_raise(kwargs: dict) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError):
        warmup_cosine(opt, **kwargs)


def task_with(scheduler, steps: float) -> GroundingTask:
    task = GroundingTask.__new__(GroundingTask)  # only the scheduler plumbing is exercised
    task.scheduler_factory = scheduler
    object.__setattr__(task, "_trainer_stub", SimpleNamespace(estimated_stepping_batches=steps))
    return task


def test_engine_fills_total_steps_only_when_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(GroundingTask, "trainer", property(lambda self: self._trainer_stub))
    assert task_with(functools.partial(warmup_cosine, warmup_steps=2), 140)._run_length_kwargs() == \
        {"total_steps": 140}
    assert task_with(functools.partial(warmup_cosine, warmup_steps=2, total_steps=9), 140)._run_length_kwargs() == {}
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=3)
    assert task_with(step_lr, 140)._run_length_kwargs() == {}
    with pytest.raises(ValueError, match="unbounded"):
        task_with(functools.partial(warmup_cosine, warmup_steps=2), float("inf"))._run_length_kwargs()
    with pytest.raises(ValueError, match="smaller than one batch"):  # an epoch of no batches (drop_last)
        task_with(functools.partial(warmup_cosine, warmup_steps=2), 0)._run_length_kwargs()
