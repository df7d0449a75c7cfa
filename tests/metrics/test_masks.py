"""Mask metrics against hand-computed cases and the real ScanNet anchors of realdata/SOURCES.md."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from grounding.metrics import intersection_union, mask_iou, summarize_ious, threshold_hits
from grounding.metrics.evaluators import ReferringMaskMetric


def t(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.bool)


def test_hand_computed_iou() -> None:
    inter, union = intersection_union(t(1, 1, 0, 0, 1), t(1, 0, 1, 0, 1))
    assert (inter.item(), union.item()) == (2, 4)
    assert mask_iou(t(1, 1, 0, 0, 1), t(1, 0, 1, 0, 1)).item() == pytest.approx(2 / (4 + 1e-6), abs=1e-12)
    assert mask_iou(t(0, 0), t(0, 0)).item() == 0.0  # 3D formula: empty vs empty is 0
    assert mask_iou(t(0, 0), t(0, 0), both_empty_iou=1.0).item() == 1.0  # RIS rule
    assert mask_iou(t(1, 0), t(0, 1)).item() == 0.0
    with pytest.raises(ValueError, match="shape"):
        mask_iou(t(1, 0), t(1, 0, 1))


def test_threshold_operator() -> None:
    iou = torch.tensor([0.25, 0.5, 0.7], dtype=torch.float64)
    assert threshold_hits(iou, (0.25, 0.5), strict=True).tolist() == [[False, False], [True, False], [True, True]]
    assert threshold_hits(iou, (0.25, 0.5), strict=False).tolist() == [[True, False], [True, True], [True, True]]


def test_evaluator_matches_reference_and_groups() -> None:
    preds = [t(1, 1, 0, 0), t(1, 1, 1, 1), t(0, 0, 0, 1), t(1, 0, 0, 0)]
    gts = [t(1, 1, 0, 0), t(1, 0, 0, 0), t(1, 0, 0, 0), t(1, 1, 0, 0)]
    groups = ["unique", "multiple", "multiple", "unique"]
    # IoUs: 1, 1/4, 0, 1/2 ; unique: {1, 1/2}, multiple: {1/4, 0}
    m = ReferringMaskMetric(thresholds=(0.25, 0.5), groups=("unique", "multiple"))
    m.update_masks(preds[:2], gts[:2], groups[:2])
    m.update_masks(preds[2:], gts[2:], groups[2:])
    out = {k: float(v) for k, v in m.compute().items()}
    assert out["overall/mIoU"] == pytest.approx(100 * (1 + 0.25 + 0 + 0.5) / 4, abs=1e-3)
    assert out["overall/Acc@0.25"] == pytest.approx(50.0)  # 1 and 0.5 (strict >; 0.25 fails)
    assert out["overall/Acc@0.5"] == pytest.approx(25.0)   # 0.5 fails the strict test (and eps)
    assert out["overall/oIoU"] == pytest.approx(100 * (2 + 1 + 0 + 1) / (2 + 4 + 2 + 2))
    assert out["unique/mIoU"] == pytest.approx(75.0, abs=1e-3)
    assert out["multiple/mIoU"] == pytest.approx(12.5, abs=1e-3)
    assert out["unique/count"] == 2 and out["overall/count"] == 4
    ious = mask_iou(torch.stack(preds), torch.stack(gts))
    ref = summarize_ious(ious, (0.25, 0.5), strict=True, inter=intersection_union(torch.stack(preds),
                         torch.stack(gts))[0], union=intersection_union(torch.stack(preds), torch.stack(gts))[1])
    assert out["overall/mIoU"] == pytest.approx(100 * ref["mIoU"])
    assert out["overall/oIoU"] == pytest.approx(100 * ref["oIoU"])
    m.reset()
    assert float(m.compute()["overall/count"]) == 0


def test_absent_group_not_reported() -> None:
    m = ReferringMaskMetric(groups=("unique", "multiple"))
    m.update_masks([t(1)], [t(1)], ["unique"])
    assert "multiple/mIoU" not in m.compute()


def test_real_scene_anchors(realdata) -> None:
    """scene0011_00: all-points prediction for object 25 and the oracle (values from SOURCES.md)."""
    instance = torch.from_numpy(np.load(realdata / "pointcept_scannet" / "scene0011_00" / "instance.npy"))
    assert instance.numel() == 237360
    gt = instance == 25
    assert mask_iou(torch.ones_like(gt), gt).item() == pytest.approx(0.024195, abs=5e-7)
    annotated = instance >= 0
    assert mask_iou(annotated, gt).item() == pytest.approx(0.027760, abs=5e-7)

    records = json.loads((realdata / "scanrefer_val_scene0011_00" / "ScanRefer_filtered_val.json").read_text())
    m = ReferringMaskMetric()
    gts = [instance == int(r["object_id"]) for r in records]
    m.update_masks(gts, gts)
    out = m.compute()
    assert int(out["overall/count"]) == 76
    assert float(out["overall/mIoU"]) == pytest.approx(100.0, abs=1e-6)
    assert float(out["overall/Acc@0.5"]) == 100.0
