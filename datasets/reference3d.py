"""Reference rows of 3D-RES computed from the data alone: a random instance of the named class.

For every description, the candidates are the scene's instances whose class equals the class the description
names, both mapped to ScanRefer's 18 classes exactly as the unique/multiple split does it (``object_name`` with
"_" -> " " through the TSV's ``raw2label``; an instance through its raw label in the prepared scene's
``meta.json`` ``instance_labels``). The predicted mask is the point mask of one candidate drawn uniformly.

The row reports the **expectation** over that draw, not one sample of it: each candidate's IoU with the ground
truth is computed with the toolkit's IoU (``grounding.metrics.masks.mask_iou``), and per description

    E[IoU] = mean over candidates of IoU,   E[hit@X] = fraction of candidates with IoU > X (or >= X),

then mIoU and Acc@X are means over descriptions, exactly as for a model. oIoU is Σ E[|P∩G|] / Σ E[|P∪G|].
Without candidates (the named class has no instance in the scene) the prediction is empty (IoU 0).

This is what a model scores that recognises the named class perfectly and ignores every other word: on
"unique" descriptions it is 100 by construction, on "multiple" ones it is about 1 / (same-class objects).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from datasets.records import ReferRecord
from datasets.scannet.labels import SCANREFER_OTHERS, LabelRow, read_label_tsv, scanrefer_raw2label
from datasets.scannet.scene import PreparedScene, instance_classes
from grounding.metrics.masks import intersection_union, iou_from_counts, threshold_hits

GROUPS = ("unique", "multiple")


def random_class_instance_row(records: Sequence[ReferRecord], scenes_dir: str | Path,
                              label_map: str | Path | Mapping[str, LabelRow],
                              thresholds: Sequence[float] = (0.25, 0.5), strict: bool = True) -> dict[str, Any]:
    """The expected metrics of "a random instance of the named class" (module docstring), per group.

    Args:
        records: ScanRefer-style records with ``unique`` set (``load_scanrefer(..., label_map=...)``).
        scenes_dir: prepared scene folders.
        label_map: ``scannetv2-labels.combined.tsv`` (path or rows).
        thresholds, strict: as the evaluator (``>`` when strict).

    Returns:
        ``{"overall"|"unique"|"multiple": {"miou", "oiou", "acc@X"..., "count"}}`` in percent, the layout of
        ``metrics.json``.
    """
    rows = read_label_tsv(label_map) if isinstance(label_map, (str, Path)) else dict(label_map)
    raw2label = scanrefer_raw2label(rows)
    by_scene: dict[str, list[ReferRecord]] = {}
    for r in records:
        by_scene.setdefault(r.scene_id, []).append(r)
    per_group: dict[str, list[np.ndarray]] = {g: [] for g in ("overall", *GROUPS)}
    for scene_id, recs in sorted(by_scene.items()):
        folder = Path(scenes_dir) / scene_id
        scene = PreparedScene.load(folder, require_superpoints=False)
        classes = instance_classes(scene, raw2label, folder, default=SCANREFER_OTHERS)
        instance = torch.from_numpy(np.asarray(scene.instance, dtype=np.int64))
        for r in recs:
            named = raw2label.get(r.object_name.replace("_", " "), SCANREFER_OTHERS)
            cands = [i for i, c in sorted(classes.items()) if c == named]
            row = _expected_row(instance, cands, r.object_ids, thresholds, strict)
            per_group["overall"].append(row)
            if r.unique is not None:
                per_group["unique" if r.unique else "multiple"].append(row)
    return {g: _summarise(np.stack(v), thresholds) for g, v in per_group.items() if v}


def _expected_row(instance: torch.Tensor, candidates: Iterable[int], object_ids: Sequence[int],
                  thresholds: Sequence[float], strict: bool) -> np.ndarray:
    """[E IoU, E inter, E union, E hit@X...] of one description over its candidates."""
    gt = torch.isin(instance, torch.tensor(list(object_ids), dtype=torch.int64))
    cands = list(candidates)
    preds = (torch.stack([instance == c for c in cands]) if cands
             else torch.zeros((1, len(instance)), dtype=torch.bool))
    inter, union = intersection_union(preds, gt.expand_as(preds))
    iou = iou_from_counts(inter, union)
    hits = threshold_hits(iou, thresholds, strict).double()
    return np.concatenate([[iou.mean().item(), inter.double().mean().item(), union.double().mean().item()],
                           hits.mean(0).numpy()])


def _summarise(rows: np.ndarray, thresholds: Sequence[float]) -> dict[str, float]:
    out = {"miou": 100.0 * float(rows[:, 0].mean()),
           "oiou": 100.0 * float(rows[:, 1].sum() / max(rows[:, 2].sum(), 1.0))}
    for k, x in enumerate(thresholds):
        out[f"acc@{x:g}"] = 100.0 * float(rows[:, 3 + k].mean())
    out["count"] = float(len(rows))
    return out
