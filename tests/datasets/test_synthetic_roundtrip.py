"""Generated rooms through the same path as real ScanNet: raw files -> preparer -> records -> batches.

Every label and mask is checked exactly against what the raw files say, recomputed here independently.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.multi3drefer import load_multi3drefer
from datasets.refer3d import Refer3DDataset
from datasets.scannet.labels import nyu40_to_scannet20, read_label_tsv, scanrefer_raw2label
from datasets.scannet.prepare import prepare_scannet
from datasets.scannet.raw import read_aggregation, read_labels, read_mesh, read_segs, scan_files
from datasets.scannet.scene import PreparedScene
from datasets.scanrefer import load_scanrefer
from datasets.synthetic import generate_synthetic, multiple_flags
from datasets.transforms import TrainTransform, ValTransform


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_synthetic(out, preset="tiny", seed=3, progress=False)
    report = prepare_scannet(out / "raw", out / "scenes", progress=False)
    assert not report.failed and len(report.prepared) == 6
    again = prepare_scannet(out / "raw", out / "scenes", progress=False)  # idempotent
    assert again.prepared == [] and len(again.skipped) == 6
    return out


def test_prepared_arrays_equal_raw_files(synth: Path) -> None:
    for scan in sorted((synth / "raw" / "scans").iterdir()):
        files = scan_files(scan)
        mesh = read_mesh(files["mesh"])
        seg = read_segs(files["segs"])
        groups = read_aggregation(files["aggregation"])
        scene = PreparedScene.load(synth / "scenes" / scan.name)
        # independent recomputation of spec §2, one vertex at a time where cheap
        instance = np.full(len(seg), -1)
        for g in groups:
            instance[np.isin(seg, g.segments)] = g.id
        np.testing.assert_array_equal(scene.instance, instance)
        np.testing.assert_array_equal(scene.semantic, nyu40_to_scannet20(read_labels(files["labels"])))
        np.testing.assert_allclose(scene.coord, mesh.xyz - mesh.xyz.astype(np.float64).mean(0), atol=1e-5)
        np.testing.assert_array_equal(scene.color, mesh.rgb)
        _, compact = np.unique(seg, return_inverse=True)
        np.testing.assert_array_equal(scene.superpoint, compact)
        # ScanNet's key property: every superpoint lies inside one instance (or in unannotated space)
        pairs = np.unique(np.stack([scene.superpoint, scene.instance], 1), axis=0)
        assert len(pairs) == scene.superpoint.max() + 1


def test_records_flags_and_batches(synth: Path) -> None:
    tsv = read_label_tsv(synth / "raw" / "scannetv2-labels.combined.tsv")
    for split in ("train", "val"):
        records = load_scanrefer(synth / f"ScanRefer_filtered_{split}.json", label_map=tsv)
        assert records and all(r.unique is not None for r in records)
        # the reader's unique/multiple equals the generator's own implementation of ScanRefer's rule
        raw_records = json.loads((synth / f"ScanRefer_filtered_{split}.json").read_text())
        assert [not r.unique for r in records] == multiple_flags(raw_records, scanrefer_raw2label(tsv))
        ds = Refer3DDataset(synth / "scenes", records, ValTransform(), max_descriptions=8)
        seen = 0
        for i in range(len(ds)):
            batch = ds.collate([ds[i]])
            scene = PreparedScene.load(synth / "scenes" / batch.scene_ids[0])
            for d, (record, gt) in enumerate(zip(batch.records, batch.eval_gt_masks())):
                expected = np.isin(scene.instance, record.object_ids)
                assert expected.any(), record.sample_id
                np.testing.assert_array_equal(gt.numpy(), expected)
                # superpoints are pure, so the superpoint GT is exactly "superpoint of a target"
                sp_target = np.unique(scene.superpoint[expected])
                spmask = batch.gt_spmask[d, : batch.sp_counts[0]].numpy()
                np.testing.assert_array_equal(np.flatnonzero(spmask), sp_target)
                seen += 1
        assert seen == len(records)


def test_training_batches_stay_aligned(synth: Path) -> None:
    records = load_scanrefer(synth / "ScanRefer_filtered_train.json")
    ds = Refer3DDataset(synth / "scenes", records, TrainTransform(max_npoint=20_000), max_descriptions=4, seed=1)
    batch = ds.collate([ds[0], ds[1]])
    assert (batch.voxel_coords[:, 1:] >= 0).all()
    assert (batch.voxel_coords[:, 1:] < torch.tensor(batch.spatial_shape)).all()
    for b in range(batch.num_scenes):
        scene = PreparedScene.load(synth / "scenes" / batch.scene_ids[b])
        sl = batch.point_slice(b)
        # subsampled points keep their labels: instance of each kept point equals the prepared one
        np.testing.assert_array_equal(batch.instance[sl].numpy(), scene.instance[batch.point_index[sl].numpy()])


def test_multi3drefer_files(synth: Path) -> None:
    for split in ("train", "val"):
        records = load_multi3drefer(synth / f"multi3drefer_{split}.json")
        assert records.report.num_inconsistent == 0
        for r in records:
            instance = PreparedScene.load(synth / "scenes" / r.scene_id).instance
            assert all((instance == o).any() for o in r.object_ids), r.sample_id
