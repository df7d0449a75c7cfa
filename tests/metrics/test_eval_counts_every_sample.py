"""Evaluation never drops a sample silently: every sample fed to the mask evaluator is in ``overall/count``.

Property-based (hypothesis, bounded): any split into batches, empty predictions and ground truths, group
names the evaluator does not know, and batches without groups; a mismatch between predictions and ground
truths is an error, not a shorter evaluation.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from grounding.metrics.evaluators import ReferringMaskMetric

FUZZ = settings(max_examples=20, deadline=timedelta(seconds=3), derandomize=True, database=None)
GROUP = st.sampled_from(["unique", "multiple", "", "mt", "zt_w_d"])


@st.composite
def batches(draw: st.DrawFn) -> list[tuple[list[torch.Tensor], list[torch.Tensor], list[str] | None]]:
    """Batches of (pred masks, gt masks, groups or None); masks may be empty (0 units) or all False."""
    out = []
    for _ in range(draw(st.integers(0, 4))):
        size = draw(st.integers(0, 5))
        units = [draw(st.integers(0, 12)) for _ in range(size)]
        preds = [torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool) for n in units]
        gts = [torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool) for n in units]
        groups = draw(st.none() | st.lists(GROUP, min_size=size, max_size=size))
        out.append((preds, gts, groups))
    return out


@pytest.mark.filterwarnings("ignore:The ``compute`` method")  # zero batches is a case under test
@FUZZ
@given(data=batches(), both_empty_iou=st.sampled_from([None, 1.0]))
def test_overall_count_is_every_sample(data: list, both_empty_iou: float | None) -> None:
    """``overall/count`` equals the number of samples fed; the named groups never exceed it."""
    metric = ReferringMaskMetric(groups=("unique", "multiple"), both_empty_iou=both_empty_iou)
    for preds, gts, groups in data:
        assert len(metric.update_masks(preds, gts, groups)) == len(preds)
    out = metric.compute()
    total = sum(len(p) for p, _, _ in data)
    assert int(out["overall/count"]) == total
    named = sum(int(out.get(f"{g}/count", 0)) for g in ("unique", "multiple"))
    assert named == sum(1 for _, _, gs in data if gs for g in gs if g in ("unique", "multiple"))
    assert all(torch.isfinite(v) for v in out.values())  # an empty mask never turns into NaN


@FUZZ
@given(n_pred=st.integers(0, 4), n_gt=st.integers(0, 4))
def test_prediction_count_mismatch_is_an_error(n_pred: int, n_gt: int) -> None:
    """Fewer (or more) predictions than ground truths raise instead of evaluating a subset."""
    metric = ReferringMaskMetric()
    preds, gts = [torch.ones(3, dtype=torch.bool)] * n_pred, [torch.ones(3, dtype=torch.bool)] * n_gt
    if n_pred == n_gt:
        metric.update_masks(preds, gts)
        assert int(metric.compute()["overall/count"]) == n_gt
    else:
        with pytest.raises(ValueError, match="predictions for"):
            metric.update_masks(preds, gts)


def test_group_list_of_the_wrong_length_is_refused() -> None:
    """A groups list shorter than the batch would silently leave samples out of their group's counts."""
    metric = ReferringMaskMetric(groups=("unique", "multiple"))
    masks = [torch.tensor([True, False]), torch.tensor([False, True])]
    with pytest.raises(ValueError, match="2 predictions"):
        metric.update_masks(masks, masks, groups=["unique"])
