"""Box metrics against hand-computed cases: IoU, Acc@0.5 with both tie conventions, the upper bound, the evaluator,
and COCOeval AP on a two-image case worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from grounding.metrics.box_evaluators import BoxRetrievalMetric
from grounding.metrics.boxes import (
    box_iou,
    coco_box_eval,
    keep_top_per_image,
    paired_iou,
    rec_scores,
    upper_bound_hits,
    write_coco_results,
    xywh_to_xyxy,
    xyxy_to_xywh,
)

NAN = math.nan


def t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def test_box_iou_hand_cases() -> None:
    a = t([[0, 0, 2, 2]])
    b = t([[0, 0, 2, 2], [1, 0, 3, 2], [2, 0, 4, 2], [5, 5, 6, 6], [0, 0, 4, 4], [1, 1, 1, 1]])
    # identical 1; half shifted: inter 2, union 6 -> 1/3; touching edge 0; disjoint 0; inside a 4x4: 4/16;
    # degenerate (zero-area) box 0
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0, 0.0, 0.25, 0.0])
    assert box_iou(a, b).dtype == torch.float64 and box_iou(b, a).shape == (6, 1)
    assert paired_iou(t([[NAN, NAN, NAN, NAN]]), a).tolist() == [0.0]  # no answer scores 0
    xywh = t([[10, 20, 30, 40]])
    assert xywh_to_xyxy(xywh).tolist() == [[10, 20, 40, 60]]
    assert xyxy_to_xywh(xywh_to_xyxy(xywh)).tolist() == xywh.tolist()


def test_acc_tie_convention() -> None:
    gt = t([[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]])
    pred = t([[0, 0, 4, 2],          # 8 / 16 = 0.5 exactly: a hit with >=, a miss with >
              [0, 0, 4, 4],          # 1.0
              [0, 0, 2, 2],          # 0.25
              [NAN, NAN, NAN, NAN]])  # no answer
    s = rec_scores(pred, gt, 0.5)
    assert (s.count, s.hits, s.hits_strict, s.ties) == (4, 2, 1, 1)
    assert s.acc == 0.5 and s.acc_strict == 0.25


def test_upper_bound() -> None:
    gt = t([[0, 0, 4, 4], [0, 0, 4, 4], [0, 0, 4, 4]])
    cands = [t([[0, 0, 2, 2], [0, 0, 4, 2]]), t([[0, 0, 2, 2]]), torch.zeros(0, 4, dtype=torch.float64)]
    assert upper_bound_hits(cands, gt).tolist() == [True, False, False]
    assert upper_bound_hits(cands, gt, strict=True).tolist() == [False, False, False]


def test_evaluator_on_a_fake_batch() -> None:
    gt = t([[0, 0, 4, 4], [10, 10, 20, 20]])
    cands = [t([[0, 0, 4, 4], [0, 0, 4, 2]]), t([[10, 10, 20, 20], [0, 0, 1, 1], [11, 11, 20, 20]])]
    batch = SimpleNamespace(eval_gt_boxes=lambda: gt, eval_candidate_boxes=lambda: cands)
    answers = [SimpleNamespace(pred_box=cands[0][1], multi_boxes=cands[0]),        # tie: 0.5
               SimpleNamespace(pred_box=cands[1][1], multi_boxes=cands[1][1:2])]   # wrong
    metric = BoxRetrievalMetric()
    metric.update(answers, batch)
    out = {k.split("/")[1]: float(v) for k, v in metric.compute().items()}
    assert out["Acc@0.5"] == 50.0 and out["Acc@0.5_strict"] == 0.0 and out["ties"] == 1
    assert out["UpperBound@0.5"] == 100.0 and out["SelectAcc@0.5"] == 50.0 and out["candidates"] == 2.5
    assert out["MultiP@0.5"] == pytest.approx(100 / 3) and out["MultiR@0.5"] == 50.0  # 1 of 3 boxes matched
    strict = BoxRetrievalMetric(strict=True)
    strict.update(answers, batch)
    assert float(strict.compute()["overall/Acc@0.5"]) == 0.0


def _two_images() -> dict:
    anns = [(1, 1, [10, 10, 20, 20]), (2, 1, [50, 50, 20, 20]), (3, 2, [0, 0, 30, 30])]  # (id, image, bbox)
    cats = {1: 1, 2: 2, 3: 1}  # annotation id -> category: image 1 has a cat and a dog, image 2 a cat
    return {"images": [{"id": 1, "width": 100, "height": 100, "file_name": "a.jpg"},
                       {"id": 2, "width": 100, "height": 100, "file_name": "b.jpg"}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [{"id": i, "image_id": im, "category_id": cats[i], "bbox": b, "area": b[2] * b[3],
                             "iscrowd": 0} for i, im, b in anns]}


def test_cocoeval_two_images_by_hand(tmp_path: Path) -> None:
    gt = _two_images()
    results = [
        {"image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "score": 0.95},   # dog: TP at every IoU
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20], "score": 0.9},    # cat: TP at every IoU
        {"image_id": 1, "category_id": 1, "bbox": [60, 60, 10, 10], "score": 0.8},    # cat: FP
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 30, 21.6], "score": 0.7},    # cat: IoU 648 / 900 = 0.72
    ]
    # Cat (2 GT). IoU thresholds 0.50-0.70 (5 of 10): TP, FP, TP -> recall 0.5, 0.5, 1; interpolated precision 1
    # up to recall 0.5 (51 of the 101 recall thresholds, 0.00-0.50) and 2/3 beyond (50 thresholds):
    # AP = (51 + 50 * 2/3) / 101. Thresholds 0.75-0.95: TP, FP, FP -> precision 1 up to recall 0.5, then 0:
    # AP = 51 / 101. Dog: AP 1 at every threshold.
    cat_low, cat_high = (51 + 50 * 2 / 3) / 101, 51 / 101
    path = write_coco_results(tmp_path / "results.json", results)
    assert json.loads(path.read_text())[3]["bbox"] == [0.0, 0.0, 30.0, 21.6]
    stats = coco_box_eval(gt, path)
    assert stats["AP50"] == pytest.approx((cat_low + 1) / 2, abs=1e-6)
    assert stats["AP75"] == pytest.approx((cat_high + 1) / 2, abs=1e-6)
    assert stats["AP"] == pytest.approx(((5 * cat_low + 5 * cat_high) / 10 + 1) / 2, abs=1e-6)
    assert stats["APm"] == -1.0  # every box is small (area < 32^2): no medium ground truth
    # Only image 2 evaluated: its single cat at IoU 0.72 -> AP50 1, AP75 0; the dog has no GT there (excluded).
    only2 = coco_box_eval(gt, results, img_ids=[2])
    assert only2["AP50"] == pytest.approx(1.0) and only2["AP75"] == pytest.approx(0.0)
    assert coco_box_eval(gt, [])["AP"] == 0.0  # loadRes cannot load an empty list: guarded


def test_keep_top_per_image() -> None:
    rows = [{"image_id": 1, "category_id": c, "bbox": [0, 0, 1, 1], "score": s}
            for c, s in [(1, 0.1), (2, 0.9), (3, 0.5)]] + [{"image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1],
                                                             "score": 0.2}]
    kept = keep_top_per_image(rows, 2)
    assert [(r["image_id"], r["category_id"]) for r in kept] == [(1, 2), (1, 3), (2, 1)]


def test_evaluator_writes_and_scores_coco_results(tmp_path: Path) -> None:
    inst = tmp_path / "instances.json"
    inst.write_text(json.dumps(_two_images()))
    dets = [SimpleNamespace(image_id=1, boxes=t([[50, 50, 20, 20], [10, 10, 20, 20]]), scores=t([[0.95, 0.9]])[0],
                            category_ids=torch.tensor([2, 1])),
            SimpleNamespace(image_id=2, boxes=t([[0, 0, 30, 30]]), scores=t([[0.7]])[0],
                            category_ids=torch.tensor([1]))]
    batch = SimpleNamespace(eval_gt_boxes=lambda: torch.zeros(0, 4), eval_candidate_boxes=lambda: [])
    metric = BoxRetrievalMetric(instances=inst, results_file=tmp_path / "out" / "coco_results.json")
    metric.update(dets, batch)
    out = metric.compute()
    assert float(out["overall/AP"]) == pytest.approx(100.0) and float(out["overall/images"]) == 2
    written = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert len(written) == 3 and coco_box_eval(inst, written)["AP"] == pytest.approx(1.0)
