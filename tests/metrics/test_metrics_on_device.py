"""The mask metrics' per-group integer sums (`group_sums`), by hand on the CPU and equal on CUDA.

CUDA has no integer matmul, so the metrics' first form (``member.T @ counts``) raised "addmm_cuda not implemented
for 'Long'" in every GPU evaluation (found on an H100, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from grounding.metrics.evaluators import ReferringMaskMetric, group_sums
from grounding.metrics.gres import GRES_GROUPS, GeneralizedReferringMaskMetric


@dataclass
class Pred:
    pred_mask: torch.Tensor
    no_target: bool = False


@dataclass
class Targets:
    gt: list[torch.Tensor]
    groups: list[str] | None = None

    def eval_gt_masks(self) -> list[torch.Tensor]:
        return self.gt

    def eval_groups(self) -> list[str] | None:
        return self.groups


def test_group_sums_by_hand_and_exact_above_float_precision() -> None:
    member = torch.tensor([[1, 1, 0], [1, 0, 1], [1, 1, 0]])           # 3 samples, groups: overall, a, b
    big = 2**40 + 1                                                      # a pixel count float32 would round
    values = torch.tensor([big, 5, 7])
    assert group_sums(member, values).tolist() == [big + 12, big + 7, 5]
    hits = torch.tensor([[1, 0], [1, 1], [0, 0]])
    assert group_sums(member, hits).tolist() == [[2, 1], [1, 0], [1, 1]]
    assert group_sums(member, values).dtype == torch.long


def _random_case(seed: int, n_samples: int = 24, n: int = 300):
    rng = np.random.default_rng(seed)
    preds, gts, groups = [], [], []
    for k in range(n_samples):
        gts.append(torch.from_numpy(rng.random(n) < (0.0 if k % 6 == 0 else 0.3)))
        preds.append(Pred(torch.from_numpy(rng.random(n) < (0.0 if k % 5 == 0 else 0.3)), no_target=k == 7))
        groups.append(GRES_GROUPS[k % len(GRES_GROUPS)])
    return preds, gts, groups


def _compute(metric, preds, gts, groups, device: str) -> dict[str, float]:
    metric = metric.to(device)
    moved = [Pred(p.pred_mask.to(device), p.no_target) for p in preds]
    metric.update(moved[:10], Targets([g.to(device) for g in gts[:10]], groups[:10]))
    metric.update(moved[10:], Targets([g.to(device) for g in gts[10:]], groups[10:]))
    return {k: float(v) for k, v in metric.compute().items()}


@pytest.mark.gpu
@pytest.mark.parametrize("make", [lambda: ReferringMaskMetric(thresholds=(0.25, 0.5), acc_name="Prec"),
                                  lambda: GeneralizedReferringMaskMetric()], ids=["ris", "gres"])
def test_mask_metrics_on_cuda_equal_the_cpu(make) -> None:
    preds, gts, groups = _random_case(0)
    cpu = _compute(make(), preds, gts, groups, "cpu")
    cuda = _compute(make(), preds, gts, groups, "cuda")
    assert cpu.keys() == cuda.keys() and "overall/mIoU" in cpu
    for key, value in cpu.items():
        assert cuda[key] == pytest.approx(value, abs=1e-9), key
