"""3D-GRES evaluator (rgsan-mdin spec §9.2) on hand-computed cases; the class-name baseline on a hand-built scene."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.batch3d import ReferBatch3D
from datasets.scannet.scene import PreparedScene
from datasets.sources3d import multi3drefer_dataset
from datasets.transforms import ValTransform
from grounding.metrics.evaluators import ReferringMaskMetric, group_sums
from grounding.metrics.gres import GRES_GROUPS, GeneralizedReferringMaskMetric, gres_ious
from pointcloud.gres_baseline import class_name_baseline, load_instance_labels, main, normalise_class_name

EPS = 1e-6


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


def mask(n: int, *on: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[list(on)] = True
    return out


def run(preds: list[Pred], gts: list[torch.Tensor], groups: list[str] | None = None,
        **kwargs) -> tuple[GeneralizedReferringMaskMetric, dict[str, float]]:
    metric = GeneralizedReferringMaskMetric(**kwargs)
    metric.update(preds, Targets(gts, groups))
    return metric, {k: float(v) for k, v in metric.compute().items()}


def test_zero_target_scores_one_only_for_an_empty_prediction() -> None:
    empty, gt_empty = mask(8), mask(8)
    metric, out = run([Pred(empty), Pred(mask(8, 3))], [gt_empty, gt_empty], ["zt_w_d", "zt_w_d"])
    assert metric.last_ious.tolist() == [1.0, 0.0]
    assert out["overall/mIoU"] == pytest.approx(50.0) and out["zt_w_d/Acc@0.5"] == pytest.approx(50.0)
    # "no target" said explicitly wins over a stray mask: still the correct zero-target answer
    metric, _ = run([Pred(mask(8, 3), no_target=True)], [gt_empty])
    assert metric.last_ious.tolist() == [1.0]


def test_empty_prediction_on_a_described_object_scores_zero() -> None:
    gt = mask(8, 1, 2)
    metric, out = run([Pred(mask(8)), Pred(mask(8, 1, 2), no_target=True), Pred(mask(8, 1, 2))], [gt, gt, gt])
    assert metric.last_ious[:2].tolist() == [0.0, 0.0]
    assert float(metric.last_ious[2]) == pytest.approx(2 / (2 + EPS))
    assert out["targeted/no_target_rate"] == pytest.approx(100 * 2 / 3) and out["targeted/count"] == 3
    assert out["zero_target/count"] == 0 and out["zero_target/empty_acc"] == 0


def test_multi_target_union_iou_by_hand() -> None:
    # GT = object {0,1,2,3} ∪ object {6,7}; prediction {2..8}: I = {2,3,6,7} = 4, U = {0..8} = 9
    gt = mask(12, 0, 1, 2, 3) | mask(12, 6, 7)
    pred = mask(12, *range(2, 9))
    metric, out = run([Pred(pred)], [gt], ["mt"])
    assert float(metric.last_ious[0]) == pytest.approx(4 / (9 + EPS), abs=1e-12)
    assert out["mt/mIoU"] == pytest.approx(100 * 4 / 9)
    assert out["mt/Acc@0.25"] == 100.0 and out["mt/Acc@0.5"] == 0.0
    iou, empty, gt_empty = gres_ious([pred], [gt])
    assert iou.dtype == torch.float64 and not empty[0] and not gt_empty[0]


def test_group_breakdown_and_zt_group() -> None:
    n = 10
    gts = [mask(n), mask(n), mask(n, 0, 1), mask(n, 2), mask(n, 3, 4, 5), mask(n), mask(n, 6)]
    preds = [Pred(mask(n)),            # zt_w_d, correct: 1
             Pred(mask(n, 9)),         # zt_wo_d, wrong: 0
             Pred(mask(n, 0)),         # st_w_d: 1/2
             Pred(mask(n, 2)),         # st_wo_d: 1
             Pred(mask(n, 3, 4)),      # mt: 2/3
             Pred(mask(n)),            # zt (newer release), correct: 1
             Pred(mask(n, 6))]         # no group: overall only, 1
    groups = ["zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt", "zt", "mystery"]
    _, out = run(preds, gts, groups)
    expect = {"zt_w_d": 1.0, "zt_wo_d": 0.0, "st_w_d": 1 / (2 + EPS), "st_wo_d": 1 / (1 + EPS),
              "mt": 2 / (3 + EPS), "zt": 1.0}
    for group, iou in expect.items():
        assert out[f"{group}/mIoU"] == pytest.approx(100 * iou), group
        assert out[f"{group}/count"] == 1
        assert out[f"{group}/Acc@0.5"] == (100.0 if iou > 0.5 else 0.0), group
    overall = [1.0, 0.0, 1 / (2 + EPS), 1 / (1 + EPS), 2 / (3 + EPS), 1.0, 1 / (1 + EPS)]
    assert out["overall/mIoU"] == pytest.approx(100 * np.mean(overall))
    assert out["overall/count"] == 7 and "mystery/mIoU" not in out
    assert out["zero_target/count"] == 3 and out["zero_target/empty_acc"] == pytest.approx(100 * 2 / 3)
    assert out["targeted/count"] == 4 and out["targeted/no_target_rate"] == 0.0
    _, only_mt = run([preds[4]], [gts[4]], ["mt"])
    assert set(only_mt) == {"overall/mIoU", "overall/Acc@0.25", "overall/Acc@0.5", "overall/count", "mt/mIoU",
                            "mt/Acc@0.25", "mt/Acc@0.5", "mt/count", "zero_target/empty_acc", "zero_target/count",
                            "targeted/no_target_rate", "targeted/count"}  # absent groups are not reported as 0


def test_strict_versus_greater_or_equal() -> None:
    # exact I / U (iou_eps 0): IoUs 0.5 (1 of 2) and 0.25 (1 of 4) sit exactly on the thresholds
    gts = [mask(4, 0, 1), mask(4, 0, 1, 2, 3)]
    preds = [Pred(mask(4, 0)), Pred(mask(4, 0))]
    _, strict = run(preds, gts, iou_eps=0.0)
    _, loose = run(preds, gts, iou_eps=0.0, strict=False)
    assert strict["overall/Acc@0.5"] == 0.0 and strict["overall/Acc@0.25"] == 50.0
    assert loose["overall/Acc@0.5"] == 50.0 and loose["overall/Acc@0.25"] == 100.0
    assert strict["overall/mIoU"] == loose["overall/mIoU"] == pytest.approx(37.5)
    assert "IoU_d >= 0.5" in GeneralizedReferringMaskMetric(strict=False).definitions()["Acc@0.5"]
    assert "IoU_d > 0.5" in GeneralizedReferringMaskMetric().definitions()["Acc@0.5"]


def test_empty_acc_and_no_target_rate() -> None:
    n = 6
    gts = [mask(n)] * 4 + [mask(n, 0), mask(n, 1)]
    preds = [Pred(mask(n)), Pred(mask(n)), Pred(mask(n), no_target=True), Pred(mask(n, 2)),
             Pred(mask(n, 0)), Pred(mask(n))]
    _, out = run(preds, gts)
    assert out["zero_target/empty_acc"] == pytest.approx(75.0) and out["zero_target/count"] == 4
    assert out["targeted/no_target_rate"] == pytest.approx(50.0) and out["targeted/count"] == 2


def test_two_updates_equal_one() -> None:
    rng = np.random.default_rng(0)
    n = 50
    gts, preds, groups = [], [], []
    for k in range(12):
        gt = torch.from_numpy(rng.random(n) < (0 if k % 4 == 0 else 0.3))
        pred = torch.from_numpy(rng.random(n) < (0 if k % 5 == 0 else 0.3))
        gts.append(gt)
        preds.append(Pred(pred, no_target=bool(k == 7)))
        groups.append(GRES_GROUPS[k % len(GRES_GROUPS)])
    _, once = run(preds, gts, groups)
    twice = GeneralizedReferringMaskMetric()
    twice.update(preds[:5], Targets(gts[:5], groups[:5]))
    twice.update(preds[5:], Targets(gts[5:], groups[5:]))
    out = {k: float(v) for k, v in twice.compute().items()}
    assert out.keys() == once.keys()
    for k in once:
        assert out[k] == pytest.approx(once[k], abs=1e-9), k
    twice.reset()
    twice.update([], Targets([], []))
    assert twice.last_ious.numel() == 0 and float(twice.compute()["overall/count"]) == 0


def test_metrics_json_through_the_engine_writer(tmp_path: Path) -> None:
    from grounding.engine.records import write_json
    from grounding.engine.run import format_metrics, nest_metrics

    n = 4
    gts = [mask(n), mask(n), mask(n, 0), mask(n, 1), mask(n, 2, 3)]
    preds = [Pred(mask(n)), Pred(mask(n)), Pred(mask(n, 0)), Pred(mask(n, 1)), Pred(mask(n, 2, 3))]
    metric, out = run(preds, gts, ["zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"])
    result = {"metrics": nest_metrics(out), "definitions": metric.definitions()}
    write_json(tmp_path / "metrics.json", result)
    saved = json.loads((tmp_path / "metrics.json").read_text())["metrics"]
    for group in ("overall", "zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"):
        assert set(saved[group]) == {"miou", "acc@0.25", "acc@0.5", "count"}, group
        assert saved[group]["miou"] == pytest.approx(100.0)
    assert saved["zero_target"] == {"empty_acc": 100.0, "count": 2.0}
    assert saved["targeted"] == {"no_target_rate": 0.0, "count": 3.0}
    table = format_metrics(result)
    assert all(f"\n{g:<12}" in table for g in ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"))
    assert "IoU_d > 0.25" in table  # every printed column has its definition


# ------------------------------------------------------------------------------------------ class-name baseline
# instance id -> (raw category, number of points); -1 = unannotated floor points
OBJECTS = {0: ("wall", 6), 1: ("chair", 10), 2: ("chair", 20), 3: ("chair", 10), 4: ("trash can", 5),
           5: ("table", 8), -1: ("", 7)}


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, PreparedScene]:
    root = tmp_path_factory.mktemp("gres_baseline")
    ids = np.concatenate([np.full(k, i) for i, (_, k) in OBJECTS.items()])
    perm = np.random.default_rng(1).permutation(len(ids))  # instances interleaved in point order
    inst = ids[perm].astype(np.int64)
    coord = np.random.default_rng(2).random((len(inst), 3)).astype(np.float32)
    scene = PreparedScene("scene0900_00", coord, np.full((len(inst), 3), 128, np.uint8),
                          np.unique(inst, return_inverse=True)[1].astype(np.int64),
                          np.zeros(len(inst), np.int64), inst,
                          meta={"instance_labels": {str(i): lab for i, (lab, _) in OBJECTS.items() if i >= 0}})
    scene.save(root / "scenes")
    records = [("mt", "chair", [1, 2]), ("st_w_d", "chair", [3]), ("st_wo_d", "trash_can", [4]),
               ("zt_w_d", "chair", []), ("zt_wo_d", "bed", []), ("st_wo_d", "Table", [5])]
    ann = [{"scene_id": scene.scene_id, "object_name": name, "ann_id": k, "description": f"the {name} number {k}",
            "object_ids": obj, "eval_type": et, "spatial": False, "color": False, "texture": False, "shape": False}
           for k, (et, name, obj) in enumerate(records)]
    (root / "multi3drefer_val.json").write_text(json.dumps(ann))
    return root / "scenes", root / "multi3drefer_val.json", scene


def test_class_baseline_returns_the_union_of_the_named_class(tiny_split) -> None:
    scenes, annotations, scene = tiny_split
    dataset = multi3drefer_dataset(scenes, annotations, ValTransform(), max_descriptions=4)
    labels = load_instance_labels(scenes, [s for s, _ in dataset.items])
    assert labels["scene0900_00"][4] == "trash can" and normalise_class_name("Trash_can ") == "trash can"
    inst = torch.from_numpy(scene.instance)
    preds, batches = [], []
    for i in range(len(dataset)):  # 6 descriptions in chunks of 4: two batches
        batch = ReferBatch3D.collate([dataset[i]])
        batches.append(batch)
        preds += class_name_baseline(batch, labels)
    by_ann = {int(p.sample_id.split("/")[1]): p for p in preds}
    chairs = torch.isin(inst, torch.tensor([1, 2, 3]))
    expected = {0: (1, 2, 3), 1: (1, 2, 3), 2: (4,), 3: (1, 2, 3), 4: (), 5: (5,)}
    for ann, ids in expected.items():
        p = by_ann[ann]
        assert p.pred_object_ids == ids, ann
        assert torch.equal(p.pred_mask, torch.isin(inst, torch.tensor(ids, dtype=torch.long))), ann
        assert [int(m.sum()) for m in p.pred_objects] == [OBJECTS[i][1] for i in ids]
        assert all(torch.equal(m, inst == i) for m, i in zip(p.pred_objects, ids))
        assert p.no_target == (ids == ())
    assert torch.equal(by_ann[0].pred_mask, chairs) and not by_ann[4].pred_mask.any()
    record = by_ann[0].to_record()
    assert record["no_target"] is False and len(record["pred_objects_rle"]) == 3
    assert record["num_points"] == scene.num_points and record["gt_object_ids"] == [1, 2]
    # scored with the evaluator: IoU by hand from the point counts (chairs 10 + 20 + 10, the targets of ann 0: 30)
    metric = GeneralizedReferringMaskMetric()
    for batch in batches:
        metric.update(class_name_baseline(batch, labels), batch)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["mt/mIoU"] == pytest.approx(100 * 30 / (40 + EPS))
    assert out["st_w_d/mIoU"] == pytest.approx(100 * 10 / (40 + EPS)) and out["st_w_d/Acc@0.25"] == 0.0
    assert out["st_wo_d/count"] == 2 and out["st_wo_d/Acc@0.5"] == 100.0
    assert out["zt_w_d/mIoU"] == 0.0 and out["zt_wo_d/mIoU"] == 100.0
    assert out["zero_target/empty_acc"] == 50.0 and out["targeted/no_target_rate"] == 0.0


def test_class_baseline_cli_writes_metrics_json(tiny_split, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    scenes, annotations, _ = tiny_split
    assert main(["--scenes", str(scenes), "--annotations", str(annotations), "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "metrics.json").read_text())
    assert set(result["metrics"]) == {"overall", "mt", "st_w_d", "st_wo_d", "zt_w_d", "zt_wo_d", "zero_target",
                                      "targeted"}
    assert result["metrics"]["overall"]["count"] == 6 and result["split"] == "val"
    assert result["metrics"]["overall"]["miou"] == pytest.approx(
        100 * (30 / 40 + 10 / 40 + 1 + 0 + 1 + 1) / 6, abs=1e-4)
    assert "empty_acc" in result["definitions"] and "mIoU" in result["definitions"]
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all({"no_target", "pred_objects_rle", "iou", "pred_mask_rle"} <= set(x) for x in lines)
    printed = capsys.readouterr().out
    assert "zero_target empty_acc 50.00" in printed and "nan" not in printed


def test_missing_instance_labels_is_a_clear_error(tmp_path: Path) -> None:
    PreparedScene("scene0901_00", np.zeros((2, 3), np.float32), np.zeros((2, 3), np.uint8), np.zeros(2, np.int64),
                  np.zeros(2, np.int64), np.zeros(2, np.int64)).save(tmp_path)
    with pytest.raises(ValueError, match="scene0901_00.*meta.json.*instance_labels"):
        load_instance_labels(tmp_path, ["scene0901_00"])


# ------------------------------------------------------------------ per-group sums, on any device
# CUDA has no integer matmul, so the metrics' first form (``member.T @ counts``) raised "addmm_cuda not implemented
# for 'Long'" in every GPU evaluation (found on an H100, docs/benchmarks.md); both metrics now use group_sums.
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
