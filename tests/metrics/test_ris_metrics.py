"""RIS metrics by hand (refcoco spec §5): oIoU, mIoU and Prec@X at the original resolution, both tie rules, the
empty-union rule, and the RIS postprocess feeding them."""

from __future__ import annotations

import torch

from grounding.metrics.evaluators import ReferringMaskMetric


def _mask(h: int, w: int, rows: slice, cols: slice) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    m[rows, cols] = True
    return m.reshape(-1)


def _metric(strict: bool) -> ReferringMaskMetric:
    return ReferringMaskMetric(thresholds=(0.5, 0.6, 0.7, 0.8, 0.9), strict=strict, both_empty_iou=1.0,
                               acc_name="Prec", iou_eps=0.0)


def test_ris_metrics_by_hand() -> None:
    # Sample 1 (10 x 10 image): GT 4 x 5 = 20 px, prediction the left 4 x 4 = 16 px inside it: I 16, U 20, IoU 0.8.
    # Sample 2 (6 x 8 image): GT 2 x 4 = 8 px, prediction 2 x 4 shifted by 2 columns: I 4, U 12, IoU 1/3.
    # Sample 3 (5 x 5): GT and prediction empty (a no-target expression): IoU 1 by the RIS rule, I = U = 0.
    preds = [_mask(10, 10, slice(0, 4), slice(0, 4)), _mask(6, 8, slice(0, 2), slice(2, 6)),
             torch.zeros(25, dtype=torch.bool)]
    gts = [_mask(10, 10, slice(0, 4), slice(0, 5)), _mask(6, 8, slice(0, 2), slice(0, 4)),
           torch.zeros(25, dtype=torch.bool)]
    loose, strict = _metric(False), _metric(True)
    ious = loose.update_masks(preds, gts)
    strict.update_masks(preds, gts)
    torch.testing.assert_close(ious, torch.tensor([0.8, 1 / 3, 1.0], dtype=torch.float64), atol=1e-6, rtol=0)
    out = loose.compute()
    assert abs(float(out["overall/mIoU"]) - 100 * (0.8 + 1 / 3 + 1.0) / 3) < 1e-4
    assert abs(float(out["overall/oIoU"]) - 100 * (16 + 4) / (20 + 12)) < 1e-6     # 62.5: large objects weigh more
    # IoU 0.8 counts at 0.8 with >= but not with >, and float noise in 16/20 must not decide that.
    assert [round(float(out[f"overall/Prec@{x}"]), 4) for x in (0.5, 0.6, 0.7, 0.8, 0.9)] == \
        [66.6667, 66.6667, 66.6667, 66.6667, 33.3333]
    s = strict.compute()
    assert [round(float(s[f"overall/Prec@{x}"]), 4) for x in (0.5, 0.6, 0.7, 0.8, 0.9)] == \
        [66.6667, 66.6667, 66.6667, 33.3333, 33.3333]
    assert "|P∪G|)" in loose.definitions()["mIoU"]                       # the exact I / U is named
    # With the 3D formula's 1e-6 in the denominator, 16 / 20 falls just below 0.8 and misses Prec@0.8 (>=).
    eps = ReferringMaskMetric(thresholds=(0.8,), strict=False, both_empty_iou=1.0, acc_name="Prec")
    eps.update_masks(preds, gts)
    assert round(float(eps.compute()["overall/Prec@0.8"]), 4) == 33.3333
    assert "IoU >= 0.5" in loose.definitions()["Prec@0.5"] and "IoU > 0.5" in strict.definitions()["Prec@0.5"]
