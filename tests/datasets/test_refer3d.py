"""Refer3DDataset and ReferBatch3D on hand-built prepared scenes (data spec §8, §10)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from datasets.batch3d import ReferBatch3D
from datasets.errors import DataFormatError
from datasets.records import ReferRecord
from datasets.refer3d import NO_MAJORITY, Refer3DDataset, chunk_records
from datasets.scannet.scene import PreparedScene
from datasets.transforms import TrainTransform, ValTransform
from grounding.metrics.evaluators import ReferringMaskMetric

CHAIR, TABLE, DOOR, SOFA, WALL = 4, 6, 7, 5, 0  # ScanNet-20 ids
# Offsets around a superpoint centre that sum to exactly zero, so every centre is exact.
OFFSETS = {1: [(0, 0, 0)], 2: [(0.25, 0, 0), (-0.25, 0, 0)], 3: [(0.25, 0, 0), (-0.25, 0, 0), (0, 0, 0)],
           4: [(0.25, 0.25, 0), (-0.25, -0.25, 0), (0.25, -0.25, 0), (-0.25, 0.25, 0)]}
OFFSETS[5] = OFFSETS[4] + [(0, 0, 0)]
OFFSETS[6] = OFFSETS[4] + [(0, 0, 0.5), (0, 0, -0.5)]


def build_scene(scene_id: str, sps: list[list[tuple[int, int]]], with_sp: bool = True) -> PreparedScene:
    """sps[k] = [(instance, semantic) per point] of superpoint k, centred at (0.5 k, -0.25 k, 0.75)."""
    coord, inst, sem, sp = [], [], [], []
    for k, pts in enumerate(sps):
        centre = np.array([0.5 * k, -0.25 * k, 0.75])
        for off, (i, s) in zip(OFFSETS[len(pts)], pts):
            coord.append(centre + off)
            inst.append(i)
            sem.append(s)
            sp.append(k)
    n = len(coord)
    color = (np.arange(n * 3).reshape(n, 3) * 7 % 256).astype(np.uint8)
    return PreparedScene(scene_id, np.asarray(coord, np.float32), color, np.asarray(sp) if with_sp else None,
                         np.asarray(sem, np.int64), np.asarray(inst, np.int64))


SCENE_A = [[(5, CHAIR)] * 4, [(5, CHAIR)] * 4, [(7, DOOR)] * 2 + [(-1, -100)] * 2,
           [(7, DOOR)] * 2 + [(-1, -100)], [(9, TABLE)] * 5, [(11, CHAIR)], [(3, WALL)] * 6]
SCENE_B = [[(1, SOFA)] * 3, [(2, TABLE)] * 3, [(-1, -100)] * 2]
CENTRES_A = np.array([[0.5 * k, -0.25 * k, 0.75] for k in range(7)], dtype=np.float32)


def sr(scene: str, obj: int, ann: int, tokens: str, unique: bool | None = None) -> ReferRecord:
    return ReferRecord(scene, ann, (obj,), "x", tokens, "scanrefer", tuple(tokens.split()), unique)


def m3(scene: str, objs: tuple[int, ...], ann: int, text: str, eval_type: str) -> ReferRecord:
    return ReferRecord(scene, ann, objs, "x", text, "multi3drefer", None, None, eval_type)


A1 = sr("scene0001_00", 5, 0, "the chair is next to the table .", unique=True)
A2 = sr("scene0001_00", 7, 0, "the door", unique=False)
A3 = m3("scene0001_00", (), 10, "there is no chair here", "zt_w_d")
A4 = m3("scene0001_00", (5, 9), 11, "the chairs and the table", "mt")
A5 = sr("scene0001_00", 11, 0, "the small chair")
B1 = sr("scene0002_00", 1, 0, "the sofa near the table", unique=True)
B2 = sr("scene0002_00", 2, 0, "a table", unique=True)
RECORDS = [B1, A1, A2, B2, A3, A4, A5]


@pytest.fixture()
def scenes_dir(tmp_path: Path) -> Path:
    build_scene("scene0001_00", SCENE_A).save(tmp_path)
    build_scene("scene0002_00", SCENE_B).save(tmp_path)
    build_scene("scene0003_00", SCENE_B, with_sp=False).save(tmp_path)
    return tmp_path


def test_chunking_is_stable_and_fixed() -> None:
    items = chunk_records(RECORDS, 2)
    assert items == [("scene0001_00", (A1, A2)), ("scene0001_00", (A3, A4)), ("scene0001_00", (A5,)),
                     ("scene0002_00", (B1, B2))]
    assert chunk_records(RECORDS, 16) == [("scene0001_00", (A1, A2, A3, A4, A5)), ("scene0002_00", (B1, B2))]
    with pytest.raises(ValueError):
        chunk_records(RECORDS, 0)


def test_validation_item_ground_truth_exact(scenes_dir: Path) -> None:
    ds = Refer3DDataset(scenes_dir, RECORDS, ValTransform(), max_descriptions=16)
    assert len(ds) == 2
    item = ds[0]
    assert item["scene_id"] == "scene0001_00" and item["records"] == [A1, A2, A3, A4, A5]
    assert torch.equal(item["point_index"], torch.arange(27))
    expected_sp = [[1, 1, 0, 0, 0, 0, 0],
                   [0, 0, 0, 1, 0, 0, 0],  # superpoint 2 is exactly half door: strict > 0.5 keeps it out
                   [0, 0, 0, 0, 0, 0, 0],  # zero target
                   [1, 1, 0, 0, 1, 0, 0],
                   [0, 0, 0, 0, 0, 1, 0]]
    assert item["gt_spmask"].tolist() == [[bool(v) for v in row] for row in expected_sp]
    assert torch.equal(item["sp_center"], torch.from_numpy(CENTRES_A))
    c = CENTRES_A.astype(np.float64)
    expected_centre = np.array([(c[0] + c[1]) / 2, c[3], [-1000.0] * 3, (c[0] + c[1] + c[4]) / 3, c[5]], np.float32)
    assert torch.equal(item["gt_center"], torch.from_numpy(expected_centre))
    assert item["sp_ins_label"].tolist() == [5, 5, NO_MAJORITY, 7, 9, 11, 3]
    expected_ref = [[1, 1, 0, 0, 0.5, 0.5, 0],  # "table" and "chair" mentioned: instances 9 and 11 at 0.5
                    [0, 0, 0.5, 2 / 3, 0, 0, 0],
                    [0.5, 0.5, 0, 0, 0, 0.5, 0],  # zero target, but "chair" is mentioned
                    [1, 1, 0, 0, 1, 0, 0],  # "chairs" is not "chair": instance 11 stays 0
                    [0.5, 0.5, 0, 0, 0, 1, 0]]
    assert torch.allclose(item["sp_ref_mask"], torch.tensor(expected_ref, dtype=torch.float32))


def brute_force_targets(item: dict, rec: ReferRecord) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Point mask, superpoint mask and centre by plain loops over the item's (transformed) points."""
    inst, sp, xyz = item["instance"].tolist(), item["superpoint"].tolist(), item["xyz_middle"].double()
    pmask = torch.tensor([i in rec.object_ids for i in inst])
    num_sp = max(sp) + 1
    spmask, centres = torch.zeros(num_sp, dtype=torch.bool), torch.zeros(num_sp, 3, dtype=torch.float64)
    for s in range(num_sp):
        members = [p for p in range(len(sp)) if sp[p] == s]
        spmask[s] = sum(bool(pmask[p]) for p in members) / len(members) > 0.5
        centres[s] = xyz[members].mean(0)
    centre = centres[spmask].mean(0) if spmask.any() else torch.full((3,), -1000.0, dtype=torch.float64)
    return pmask, spmask, centre


def test_training_ground_truth_follows_the_transform(scenes_dir: Path) -> None:
    ds = Refer3DDataset(scenes_dir, RECORDS, TrainTransform(max_npoint=16), max_descriptions=16, seed=3)
    dropped_seen = False
    for epoch in range(20):
        ds.set_epoch(epoch)
        item = ds[0]
        assert len(item["xyz"]) == 16 and item["superpoint"].max() + 1 == item["sp_center"].shape[0]
        batch = ReferBatch3D.collate([item])
        for j, rec in enumerate(item["records"]):
            pmask, spmask, centre = brute_force_targets(item, rec)
            assert torch.equal(batch.gt_pmask[j], pmask)
            assert torch.equal(item["gt_spmask"][j], spmask)
            assert torch.allclose(item["gt_center"][j].double(), centre, atol=1e-5)
        if 11 not in item["instance"].tolist():  # the one-point target A5 fell out of the subsample
            dropped_seen = True
            assert not item["gt_spmask"][4].any() and item["gt_center"][4].tolist() == [-1000.0] * 3
            assert not batch.gt_pmask[4].any()
    assert dropped_seen


def test_reproducible_per_seed_epoch_and_index(scenes_dir: Path) -> None:
    t = TrainTransform(max_npoint=20)
    ds = Refer3DDataset(scenes_dir, RECORDS, t, max_descriptions=2, seed=5)
    first = ds[1]
    assert torch.equal(first["xyz_middle"], ds[1]["xyz_middle"])
    other = Refer3DDataset(scenes_dir, RECORDS, t, max_descriptions=2, seed=5)
    assert torch.equal(first["xyz"], other[1]["xyz"])
    assert not torch.equal(first["xyz_middle"], ds[0]["xyz_middle"])  # same scene, other item
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(first["xyz_middle"], ds[1]["xyz_middle"])
    reseeded = Refer3DDataset(scenes_dir, RECORDS, t, max_descriptions=2, seed=6)
    assert not torch.equal(first["xyz_middle"], reseeded[1]["xyz_middle"])


def test_dataloader_workers_follow_set_epoch(scenes_dir: Path) -> None:
    ds = Refer3DDataset(scenes_dir, RECORDS, TrainTransform(max_npoint=20), max_descriptions=2, seed=1)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=2, persistent_workers=True,
                        collate_fn=ds.collate)
    seen = []
    for epoch in range(2):
        ds.set_epoch(epoch)  # before iter(): persistent workers read the shared epoch
        got = [b.coord for b in loader]
        assert all(torch.equal(g, ds[i]["xyz_middle"]) for i, g in enumerate(got))
        seen.append(got)
    assert not torch.equal(seen[0][0], seen[1][0])


def test_batch_of_two_scenes_equals_each_alone(scenes_dir: Path) -> None:
    ds = Refer3DDataset(scenes_dir, RECORDS, ValTransform(), max_descriptions=16)
    a, b = ds[0], ds[1]
    batch, alone_a, alone_b = ReferBatch3D.collate([a, b]), ReferBatch3D.collate([a]), ReferBatch3D.collate([b])
    assert len(batch) == 7 and batch.sample_ids == [r.sample_id for r in (A1, A2, A3, A4, A5, B1, B2)]
    assert batch.point_offsets.tolist() == [0, 27, 35] and batch.sp_offsets.tolist() == [0, 7, 10]
    assert batch.desc_offsets.tolist() == [0, 5, 7] and batch.desc_scene.tolist() == [0] * 5 + [1] * 2
    assert batch.scenes_len.tolist() == [5, 2] and batch.scene_ids == ["scene0001_00", "scene0002_00"]
    assert batch.feat.shape == (35, 6) and torch.equal(batch.feat[:, 3:], batch.coord)
    for name in ("coord", "xyz", "feat", "instance", "semantic", "point_index"):
        whole = getattr(batch, name)
        assert torch.equal(whole[:27], getattr(alone_a, name)) and torch.equal(whole[27:], getattr(alone_b, name))
    assert torch.equal(batch.superpoint, torch.cat([alone_a.superpoint, alone_b.superpoint + 7]))
    assert torch.equal(batch.sp_center, torch.cat([alone_a.sp_center, alone_b.sp_center]))
    in_a = batch.voxel_coords[:, 0] == 0
    va = int(in_a.sum())
    assert torch.equal(batch.voxel_coords[in_a], alone_a.voxel_coords)
    assert torch.equal(batch.voxel_coords[~in_a][:, 1:], alone_b.voxel_coords[:, 1:])
    assert bool((batch.voxel_coords[~in_a][:, 0] == 1).all())
    assert torch.equal(batch.voxel_feats, torch.cat([alone_a.voxel_feats, alone_b.voxel_feats]))
    assert torch.equal(batch.p2v, torch.cat([alone_a.p2v, alone_b.p2v + va]))
    # Superpoint targets are padded to S_max = 7 columns; scene B's padding is False / 0.
    assert batch.gt_spmask.shape == (7, 7) and batch.sp_ref_mask.shape == (7, 7)
    assert torch.equal(batch.gt_spmask[:5], alone_a.gt_spmask)
    assert torch.equal(batch.gt_spmask[5:, :3], alone_b.gt_spmask) and not batch.gt_spmask[5:, 3:].any()
    assert torch.equal(batch.sp_ref_mask[5:, :3], alone_b.sp_ref_mask) and not batch.sp_ref_mask[5:, 3:].any()
    assert batch.sp_padding_mask().tolist() == [[False] * 7, [False] * 3 + [True] * 4]
    assert torch.equal(batch.gt_center, torch.cat([alone_a.gt_center, alone_b.gt_center]))
    for got, want in zip(batch.gt_pmask, alone_a.gt_pmask + alone_b.gt_pmask):
        assert torch.equal(got, want)
    assert batch.gt_pmask[5].tolist() == [True] * 3 + [False] * 5  # B1 = instance 1 of scene B
    assert batch.groups == ["unique", "multiple", "zt_w_d", "mt", None, "unique", "unique"]
    assert batch.eval_groups() == ["unique", "multiple", "zt_w_d", "mt", "", "unique", "unique"]
    assert batch.texts[0] == A1.description and batch.object_ids[3] == (5, 9)
    moved = batch.to("cpu")
    assert isinstance(moved, ReferBatch3D) and len(moved) == 7
    for f in dataclasses.fields(batch):
        x, y = getattr(batch, f.name), getattr(moved, f.name)
        assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, f.name


def test_oracle_scores_one_and_original_order(scenes_dir: Path) -> None:
    ds = Refer3DDataset(scenes_dir, RECORDS, ValTransform(), max_descriptions=16)
    batch = ReferBatch3D.collate([ds[0], ds[1]])
    metric = ReferringMaskMetric(groups=("unique", "multiple"), both_empty_iou=1.0)
    metric.update_masks(batch.eval_gt_masks(), batch.eval_gt_masks(), batch.eval_groups())
    out = metric.compute()
    assert float(out["overall/mIoU"]) == pytest.approx(100.0, abs=1e-3) and float(out["overall/count"]) == 7
    assert float(out["overall/Acc@0.5"]) == 100.0
    # Subsampled training scene: masks go back to the prepared scene's order, dropped points False.
    train = Refer3DDataset(scenes_dir, RECORDS, TrainTransform(max_npoint=20), max_descriptions=16)
    tb = ReferBatch3D.collate([train[0]])
    full = tb.to_original_points(tb.gt_pmask[0], 0)
    original = torch.from_numpy(PreparedScene.load(scenes_dir / "scene0001_00").instance) == 5
    kept = torch.zeros(27, dtype=torch.bool)
    kept[tb.point_index] = True
    assert full.shape == (27,) and torch.equal(full, original & kept)


def test_missing_scene_and_unknown_object_are_named(scenes_dir: Path) -> None:
    missing = sr("scene0042_00", 1, 3, "a chair")
    with pytest.raises(DataFormatError, match=r"scene0042_00/1/3.*field 'scene_id'"):
        Refer3DDataset(scenes_dir, [A1, missing], ValTransform(), max_descriptions=4)
    unknown = m3("scene0002_00", (2, 42), 7, "two things", "mt")
    ds = Refer3DDataset(scenes_dir, [B1, unknown], ValTransform(), max_descriptions=4)
    with pytest.raises(DataFormatError, match=r"scene0002_00/7.*field 'object_ids'.*\[42\]"):
        ds[0]


def test_scenes_without_superpoints(scenes_dir: Path) -> None:
    rec = sr("scene0003_00", 2, 0, "a table")
    with pytest.raises(DataFormatError, match="superpoint"):
        Refer3DDataset(scenes_dir, [rec], ValTransform(), max_descriptions=4)[0]
    ds = Refer3DDataset(scenes_dir, [rec], ValTransform(), max_descriptions=4, require_superpoints=False)
    item = ds[0]
    assert "superpoint" not in item and "gt_spmask" not in item
    batch = ReferBatch3D.collate([item])
    assert batch.superpoint is None and batch.gt_spmask is None and batch.gt_center is None
    assert batch.gt_pmask[0].tolist() == [False] * 3 + [True] * 3 + [False] * 2
    with_sp = Refer3DDataset(scenes_dir, [B1], ValTransform(), max_descriptions=4)[0]
    with pytest.raises(ValueError, match="mixes"):
        ReferBatch3D.collate([item, with_sp])


def test_an_empty_split_is_refused(tmp_path: Path) -> None:
    """Zero records would evaluate to "count 0" without an error; the dataset says so instead."""
    with pytest.raises(DataFormatError, match="no descriptions"):
        Refer3DDataset(tmp_path, [], ValTransform(), max_descriptions=8)


def test_fine_labels_from_the_raw_categories_and_the_label_map(tmp_path: Path) -> None:
    from datasets.scannet.labels import LabelRow, write_label_tsv

    scene = build_scene("scene0001_00", SCENE_A)
    # instance 5 a chair (NYU40 5), 7 a door (8), 9 a lamp (35: outside ScanNet-20), 3 a wall (1); 11 is a
    # category the map does not know
    scene.meta["instance_labels"] = {"5": "chair", "7": "door", "9": "lamp", "11": "mystery thing", "3": "wall"}
    scene.save(tmp_path)
    tsv = tmp_path / "scannetv2-labels.combined.tsv"
    write_label_tsv(tsv, [LabelRow("chair", 5, "chair"), LabelRow("door", 8, "door"), LabelRow("lamp", 35, "lamp"),
                          LabelRow("wall", 1, "wall")])
    ds = Refer3DDataset(tmp_path, [A1, A4], ValTransform(), max_descriptions=8, label_map=tsv)
    batch = ds.collate([ds[0]])
    expected = {5: 4, 7: 7, 9: 34, 11: -100, 3: 0, -1: -100}
    assert batch.semantic_fine.tolist() == [expected[int(i)] for i in batch.instance]
    # the class heads can learn them; the target class of "the chairs and the table" is the majority: chair
    from pointcloud.mdin.criterion import target_classes

    assert target_classes(batch, 40, "semantic_fine").tolist() == [4, 4]  # (5,) chair; (5, 9): 8 chair, 5 lamp
    # without a label map there is no such field, and the heads say what to do
    plain = Refer3DDataset(tmp_path, [A1], ValTransform(), max_descriptions=8)
    plain_batch = plain.collate([plain[0]])
    assert plain_batch.semantic_fine is None
    with pytest.raises(ValueError, match="label_map"):
        target_classes(plain_batch, 40, "semantic_fine")
    # a scene without raw categories (the Pointcept layout) is named with its field
    (tmp_path / "scene0001_00" / "meta.json").write_text('{"scene_id": "scene0001_00"}')
    with pytest.raises(DataFormatError, match="instance_labels"):
        Refer3DDataset(tmp_path, [A1], ValTransform(), max_descriptions=8, label_map=tsv)[0]
