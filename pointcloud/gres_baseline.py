"""Class-name baseline of 3D-GRES: answer every description with every instance of the class it names.

The bar of MDIN on ``mt`` (issue 5) is compared with this row. For each description, the prediction is the
union of the point masks of all instances of the scene whose class equals the record's ``object_name``; when
the scene has no such instance the prediction is "no target" (empty). So the baseline scores 100 on
``st_wo_d`` and ``zt_wo_d`` by construction, 0 on ``zt_w_d``, and on ``st_w_d`` / ``mt`` the fraction of the
class's points that the description selects.

Class match (the choice, and why): an instance's class is its **raw ScanNet category**, the aggregation
``label`` that the preparer keeps in ``meta.json`` ``instance_labels``; it matches when it equals the record's
``object_name`` after :func:`normalise_class_name` (``_`` -> space, lower case, single spaces). ScanRefer and
Multi3DRefer write ``object_name`` as exactly that label with spaces replaced by underscores (``trash_can``,
``kitchen_counter``), and so does the synthetic generator (``datasets/synthetic/multi.py``), so this is the
class the annotators named. The coarser tables would answer with objects of other classes: ScanNet-20 point
labels have no lamp, tv, pillow, nightstand, dresser or whiteboard and merge trash cans into otherfurniture,
and ScanRefer-18 merges all of those into "others".

``python -m pointcloud.gres_baseline --scenes DIR --annotations multi3drefer_val.json --out DIR`` scores the
baseline on a whole split with :class:`grounding.metrics.gres.GeneralizedReferringMaskMetric`, prints the table
and writes ``metrics.json`` (the layout of ``grounding eval``) and ``predictions.jsonl`` (the MDIN keys, so
``grounding render`` draws it).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from datasets.batch3d import ReferBatch3D
from datasets.errors import DataFormatError
from datasets.pointmask import mask_to_rle

InstanceLabels = Mapping[str, Mapping[int, str]]  # scene_id -> instance id -> raw category


def normalise_class_name(name: str) -> str:
    """``"Trash_can"`` -> ``"trash can"``: underscores to spaces, lower case, whitespace collapsed."""
    return " ".join(str(name).replace("_", " ").lower().split())


def load_instance_labels(scenes_dir: str | Path, scene_ids: Sequence[str]) -> dict[str, dict[int, str]]:
    """Raw category of every instance of the given prepared scenes (``meta.json`` ``instance_labels``).

    Raises:
        DataFormatError: a scene's ``meta.json`` is missing or has no ``instance_labels`` (scenes prepared
            from the Pointcept layout carry none; prepare them from the ScanNet raw files).
    """
    out: dict[str, dict[int, str]] = {}
    for scene_id in dict.fromkeys(scene_ids):
        path = Path(scenes_dir) / scene_id / "meta.json"
        if not path.is_file():
            raise DataFormatError(path, "not a prepared scene (meta.json is missing)")
        labels = json.loads(path.read_text()).get("instance_labels")
        if not isinstance(labels, dict):
            raise DataFormatError(path, "no instance class names: re-run `grounding prepare` on the ScanNet raw "
                                  "files (the Pointcept layout has none)", field="instance_labels")
        out[scene_id] = {int(k): str(v) for k, v in labels.items()}
    return out


@dataclass
class ClassBaselinePrediction:
    """One description's answer.

    Attributes:
        sample_id, scene_id, description, object_name: from the record.
        pred_mask: (N_original,) bool, union of the named class's instances, prepared scene's original order.
        pred_objects: one (N_original,) bool mask per returned instance, in ``pred_object_ids`` order.
        pred_object_ids: the returned instance ids (ascending).
        gt_object_ids: the record's targets (the ground truth is their union).
    """

    sample_id: str
    scene_id: str
    description: str
    object_name: str
    pred_mask: Tensor
    pred_objects: list[Tensor] = field(default_factory=list)
    pred_object_ids: tuple[int, ...] = ()
    gt_object_ids: tuple[int, ...] = ()

    @property
    def no_target(self) -> bool:
        """True when the scene has no instance of the named class (the prediction is empty)."""
        return not bool(self.pred_mask.any())

    def to_record(self) -> dict[str, Any]:
        """A ``predictions.jsonl`` line with the MDIN keys (``no_target``, ``pred_objects_rle``)."""
        return {"sample_id": self.sample_id, "scene_id": self.scene_id, "description": self.description,
                "object_name": self.object_name, "num_points": int(self.pred_mask.numel()),
                "num_pred_points": int(self.pred_mask.sum()), "gt_object_ids": list(self.gt_object_ids),
                "pred_object_ids": list(self.pred_object_ids), "no_target": self.no_target,
                "pred_mask_rle": mask_to_rle(self.pred_mask),
                "pred_objects_rle": [mask_to_rle(m) for m in self.pred_objects]}


def class_name_baseline(batch: ReferBatch3D, instance_labels: InstanceLabels) -> list[ClassBaselinePrediction]:
    """Every instance of the named class, per description of ``batch`` (module docstring).

    Args:
        batch: D descriptions over B scenes (``instance`` (P,) int64 gives each point's object id).
        instance_labels: scene_id -> {instance id: raw category} for every scene of the batch
            (:func:`load_instance_labels`).

    Returns:
        D predictions in batch description order; masks over each scene's original points
        (:meth:`ReferBatch3D.to_original_points`), on the CPU.
    """
    out: list[ClassBaselinePrediction] = []
    offsets = batch.desc_offsets.tolist()
    for b, scene_id in enumerate(batch.scene_ids):
        if offsets[b] == offsets[b + 1]:
            continue
        if scene_id not in instance_labels:
            raise KeyError(f"class_name_baseline: no instance labels for scene {scene_id}")
        inst = batch.instance[batch.point_slice(b)].cpu()  # (P_b,)
        present = set(torch.unique(inst).tolist())
        by_class: dict[str, list[int]] = {}
        for obj, label in instance_labels[scene_id].items():
            if obj >= 0 and obj in present:  # -1 is "unannotated", never an object
                by_class.setdefault(normalise_class_name(label), []).append(obj)
        for j in range(offsets[b], offsets[b + 1]):
            rec = batch.records[j]
            ids = tuple(sorted(by_class.get(normalise_class_name(rec.object_name), [])))
            objects = [batch.to_original_points(inst == i, b, fill=False) for i in ids]
            union = torch.isin(inst, torch.tensor(ids, dtype=inst.dtype))
            out.append(ClassBaselinePrediction(
                sample_id=rec.sample_id, scene_id=rec.scene_id, description=rec.description,
                object_name=rec.object_name, pred_mask=batch.to_original_points(union, b, fill=False),
                pred_objects=objects, pred_object_ids=ids, gt_object_ids=tuple(rec.object_ids)))
    return out


def evaluate_split(scenes_dir: str | Path, annotations: str | Path, max_descriptions: int = 64,
                   strict: bool = True, limit: int | None = None) -> tuple[dict[str, float], dict[str, str],
                                                                          list[dict[str, Any]]]:
    """Run the baseline over a Multi3DRefer split and score it.

    Returns:
        ``(metrics, definitions, records)``: the evaluator's ``compute()`` as floats (``<group>/<name>``
        keys), its ``definitions()``, and one ``predictions.jsonl`` line per description (with its ``iou``).
    """
    from datasets.sources3d import multi3drefer_dataset
    from datasets.transforms import ValTransform
    from grounding.metrics.gres import GeneralizedReferringMaskMetric

    dataset = multi3drefer_dataset(scenes_dir, annotations, ValTransform(), max_descriptions, limit=limit)
    labels = load_instance_labels(scenes_dir, [scene for scene, _ in dataset.items])
    metric = GeneralizedReferringMaskMetric(strict=strict)
    records: list[dict[str, Any]] = []
    for index in range(len(dataset)):
        batch = ReferBatch3D.collate([dataset[index]])
        predictions = class_name_baseline(batch, labels)
        metric.update(predictions, batch)
        for pred, iou in zip(predictions, metric.last_ious.tolist()):
            records.append({**pred.to_record(), "iou": iou})
    metrics = {k: float(v) for k, v in metric.compute().items()}
    return metrics, metric.definitions(), sorted(records, key=lambda r: r["sample_id"])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: score the class-name baseline on one split; writes ``<out>/metrics.json`` and ``predictions.jsonl``."""
    p = argparse.ArgumentParser(prog="python -m pointcloud.gres_baseline", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=Path, required=True, help="prepared scene folders")
    p.add_argument("--annotations", type=Path, required=True, help="multi3drefer_<split>.json")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--split", default="val", help="split name written into metrics.json (default val)")
    p.add_argument("--max-descriptions", type=int, default=64, help="descriptions per item (default 64)")
    p.add_argument("--non-strict", action="store_true", help="Acc@X counts IoU >= X (default: IoU > X, as MDIN)")
    p.add_argument("--limit", type=int, default=None, help="only the first N descriptions (quick runs)")
    args = p.parse_args(argv)
    # The engine's helpers give metrics.json the exact layout of `grounding eval` (imported here: they are heavy).
    from grounding.engine.records import write_json
    from grounding.engine.run import format_metrics, nest_metrics
    from grounding.metrics.gres import TARGETED, ZERO_TARGET

    start = time.time()
    metrics, definitions, records = evaluate_split(args.scenes, args.annotations, args.max_descriptions,
                                                   strict=not args.non_strict, limit=args.limit)
    result = {"split": args.split, "checkpoint": None, "method": "class-name baseline (every instance of the "
              "named raw ScanNet category)", "annotations": str(args.annotations), "metrics": nest_metrics(metrics),
              "definitions": definitions, "world_size": 1, "seconds": round(time.time() - start, 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "metrics.json", result)
    (args.out / "predictions.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    # The engine's table takes its columns from "overall": the no-target extras are printed below it.
    extras = result["metrics"]
    table = {g: v for g, v in extras.items() if g not in (ZERO_TARGET, TARGETED)}
    print(format_metrics({**result, "metrics": table}))
    print(f"\nzero_target empty_acc {extras['zero_target']['empty_acc']:.2f} "
          f"({extras['zero_target']['count']:.0f} descriptions); targeted no_target_rate "
          f"{extras['targeted']['no_target_rate']:.2f} ({extras['targeted']['count']:.0f} descriptions)")
    print(f"metrics: {args.out / 'metrics.json'}\npredictions: {args.out / 'predictions.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
