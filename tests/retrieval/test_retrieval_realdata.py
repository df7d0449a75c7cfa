"""REC scoring on the real RefCOCO CSV boxes (../shared/realdata/refcoco_csv; skipped when absent).

Candidates of an image: the distinct ref boxes of that image in the split, in ref_id order (the CSV has no other
boxes). A perfect index scores Acc@0.5 = 1; the off-by-one index (the next ref of the same image, cyclically)
scores what the IoUs worked out by hand below give.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from datasets.refcoco_csv import load_refcoco_csv
from grounding.metrics.boxes import box_iou, rec_scores, upper_bound_hits, xywh_to_xyxy

# Hand computation, refcoco unc val (boxes x, y, w, h from the CSV), IoU of ref k's box with ref k+1's:
#   134420: A (169.71, 220.04, 319.28, 343.74), B (18.7, 135.19, 322.15, 422.83): inter 171.14 x 337.98 = 57842.3,
#           areas 109749.3 + 136214.7 -> IoU 0.3075
#   157714: (0, 186.61, 501.57, 293.39), (88.45, 61.48, 242.7, 177.98): inter 242.7 x 52.85 = 12826.7 -> 0.0723
#   363252: (249.35, 287.01, 96.1, 206.5), (144.3, 301.0, 109.61, 193.52): inter 4.56 x 192.51 = 877.8 -> 0.0218
#   460370: P (0, 113.23, 69.09, 278.27), Q (247.56, 75.8, 99.8, 339.69), R (64.24, 67.53, 174.19, 359.47):
#           P-Q 0 and Q-R 0 (disjoint in x), R-P inter 4.85 x 278.27 = 1349.6 -> 0.0168
# Every shifted answer is below 0.5: the off-by-one Acc@0.5 on these 21 sentences is 0.
HAND_IOU = {134420: [0.3075], 157714: [0.0723], 363252: [0.0218], 460370: [0.0, 0.0, 0.0168]}
HAND_SENTENCES = 5 + 6 + 6 + 9


def _index(csv: Path) -> tuple[list, dict[int, list[int]], dict[int, torch.Tensor]]:
    rows = load_refcoco_csv(csv)
    refs: dict[int, dict[int, tuple]] = {}
    for r in rows:
        refs.setdefault(r.image_id, {})[r.ref_id] = r.box
    ref_order = {img: sorted(d) for img, d in refs.items()}
    cands = {img: xywh_to_xyxy(torch.tensor([refs[img][k] for k in ref_order[img]], dtype=torch.float64))
             for img in refs}
    return rows, ref_order, cands


def _predict(rows, ref_order, cands, shift: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    pred, gt, lists = [], [], []
    for r in rows:
        order = ref_order[r.image_id]
        k = (order.index(r.ref_id) + shift) % len(order)
        pred.append(cands[r.image_id][k])
        gt.append(xywh_to_xyxy(torch.tensor(r.box, dtype=torch.float64)))
        lists.append(cands[r.image_id])
    return torch.stack(pred), torch.stack(gt), lists


@pytest.fixture(scope="module")
def refcoco_val(realdata: Path):
    return _index(realdata / "refcoco_csv" / "data" / "refcoco_unc_val.csv")


def test_perfect_index_scores_one(refcoco_val) -> None:
    rows, ref_order, cands = refcoco_val
    assert len(rows) == 10834
    pred, gt, lists = _predict(rows, ref_order, cands, 0)
    s = rec_scores(pred, gt)
    assert (s.count, s.acc, s.acc_strict) == (10834, 1.0, 1.0)
    assert bool(upper_bound_hits(lists, gt).all())


def test_off_by_one_on_the_hand_images(refcoco_val) -> None:
    rows, ref_order, cands = refcoco_val
    for image_id, ious in HAND_IOU.items():
        c = cands[image_id]
        shifted = torch.roll(c, -1, 0)
        got = [float(box_iou(c[k:k + 1], shifted[k:k + 1])) for k in range(len(c) if len(c) > 2 else 1)]
        assert got == pytest.approx(ious, abs=5e-4), image_id
    subset = [r for r in rows if r.image_id in HAND_IOU]
    assert len(subset) == HAND_SENTENCES
    pred, gt, _ = _predict(subset, ref_order, cands, 1)
    s = rec_scores(pred, gt)
    assert (s.count, s.hits, s.ties) == (HAND_SENTENCES, 0, 0)


def test_off_by_one_on_the_whole_split_matches_a_plain_loop(refcoco_val) -> None:
    rows, ref_order, cands = refcoco_val
    pred, gt, _ = _predict(rows, ref_order, cands, 1)
    s = rec_scores(pred, gt)

    def iou(a: list[float], b: list[float]) -> float:  # independent reference: plain Python floats
        iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = iw * ih
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union > 0 else 0.0

    hits = sum(iou(p, g) >= 0.5 for p, g in zip(pred.tolist(), gt.tolist()))
    assert s.hits == hits and 0 < s.acc < 0.2  # refs of one image rarely overlap at IoU 0.5
