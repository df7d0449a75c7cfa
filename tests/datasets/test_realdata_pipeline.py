"""The real ScanNet scene scene0011_00 with its 76 ScanRefer descriptions, through the whole data path.

Pointcept .npy scene -> prepared folder -> ScanRefer records (unique/multiple by ScanRefer's rule)
-> Refer3DDataset (validation transform) -> ReferBatch3D -> ReferringMaskMetric.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.refer3d import Refer3DDataset
from datasets.scannet.pointcept import convert_pointcept
from datasets.scanrefer import load_scanrefer
from datasets.transforms import ValTransform
from grounding.metrics.evaluators import ReferringMaskMetric


@pytest.fixture(scope="module")
def scene_and_records(realdata: Path, tmp_path_factory) -> tuple[Path, list]:
    out = tmp_path_factory.mktemp("prepared")
    report = convert_pointcept(realdata / "pointcept_scannet", out, scene_ids=["scene0011_00"], progress=False)
    assert report.prepared == ["scene0011_00"] and not report.failed
    records = load_scanrefer(realdata / "scanrefer_val_scene0011_00" / "ScanRefer_filtered_val.json",
                             label_map=realdata / "scannet_meta" / "scannetv2-labels.combined.tsv")
    return out, records


def test_unique_multiple_counts(scene_and_records) -> None:
    _, records = scene_and_records
    assert len(records) == 76
    assert sum(r.unique for r in records) == 5 and sum(not r.unique for r in records) == 71
    assert {r.object_ids[0] for r in records if r.unique} == {25}


def test_gt_masks_and_oracle(scene_and_records, realdata: Path) -> None:
    scenes, records = scene_and_records
    instance = np.load(realdata / "pointcept_scannet" / "scene0011_00" / "instance.npy")
    ds = Refer3DDataset(scenes, records, ValTransform(), max_descriptions=64, require_superpoints=False)
    assert len(ds) == 2  # 76 descriptions in chunks of at most 64
    metric = ReferringMaskMetric(groups=("unique", "multiple"))
    seen = []
    for i in range(len(ds)):
        batch = ds.collate([ds[i]])
        gts = batch.eval_gt_masks()
        for record, gt in zip(batch.records, gts):
            # validation keeps every point in file order: the mask is exactly instance == object_id
            assert gt.shape == (237360,)
            assert torch.equal(gt.cpu(), torch.from_numpy(instance == record.object_ids[0]))
            seen.append(record.sample_id)

        class Oracle:
            def __init__(self, m: torch.Tensor) -> None:
                self.pred_mask = m

        metric.update([Oracle(g) for g in gts], batch)
    assert sorted(seen) == sorted(r.sample_id for r in records)
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["overall/count"] == 76 and out["unique/count"] == 5 and out["multiple/count"] == 71
    for group in ("overall", "unique", "multiple"):
        assert out[f"{group}/mIoU"] == pytest.approx(100.0, abs=1e-4)  # IoU = I / (U + 1e-6)
        assert out[f"{group}/Acc@0.25"] == 100.0 and out[f"{group}/Acc@0.5"] == 100.0
