"""prepare_scene against hand-computed answers, named errors on bad scans, and the batch driver's guarantees."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataFormatError
from datasets.scannet import (
    PREPARER_VERSION,
    Mesh,
    PreparedScene,
    SegGroup,
    assign_instances,
    prepare_scannet,
    prepare_scene,
    scan_files,
    write_aggregation,
    write_labels,
    write_mesh,
    write_segs,
)

# eight corners of a 2 m cube shifted by (10, -4, 1): the vertex mean is (11, -3, 2), exactly representable
XYZ = np.array([[x, y, z] for z in (0, 2) for y in (0, 2) for x in (0, 2)], np.float32) + np.float32([10, -4, 1])
SEG = np.array([40, 40, 7, 7, 1000, 1000, 55, 3])  # sorted unique: 3, 7, 40, 55, 1000
NYU40 = np.array([5, 5, 0, 13, 1, 39, 40, 36])  # chair chair none blinds wall otherfurniture otherprop bathtub
GROUPS = [
    SegGroup(id=3, object_id=3, label="chair", segments=[40, 40]),  # repeated inside one group: not an overlap
    SegGroup(id=7, object_id=7, label="bathtub", segments=[7, 1000]),
    SegGroup(id=9, object_id=9, label="wall", segments=[1000, 12345]),  # 1000 again (later wins); 12345 unknown
    SegGroup(id=11, object_id=11, label="lamp", segments=[999999]),  # only an unknown segment: empty object
]


def write_scan(folder: Path, xyz: np.ndarray = XYZ, seg: np.ndarray = SEG, nyu40: np.ndarray = NYU40,
               groups: list[SegGroup] = GROUPS) -> dict[str, Path]:
    n = len(xyz)
    rgb = (np.arange(n * 3).reshape(n, 3) * 7 % 256).astype(np.uint8)
    mesh = Mesh(xyz=xyz, rgb=rgb, faces=np.array([[0, 1, 2], [1, 3, 2], [4, 5, 6]]) % n)
    files = scan_files(folder)
    write_mesh(files["mesh"], mesh)
    write_labels(files["labels"], mesh, nyu40, label_rgb=np.full((n, 3), 9, np.uint8))
    write_segs(files["segs"], folder.name, seg)
    write_aggregation(files["aggregation"], folder.name, groups)
    return files


def test_prepare_scene_known_answers(tmp_path: Path) -> None:
    files = write_scan(tmp_path / "scene0100_00")
    s = prepare_scene(tmp_path / "scene0100_00")
    assert s.scene_id == "scene0100_00" and s.num_points == 8
    assert s.coord.dtype == np.float32 and np.array_equal(s.coord, XYZ - np.float32([11, -3, 2]))
    assert s.meta["centre"] == [11.0, -3.0, 2.0]
    assert s.color.dtype == np.uint8 and np.array_equal(s.color, (np.arange(24).reshape(8, 3) * 7 % 256))
    assert s.superpoint.dtype == np.int64 and s.superpoint.tolist() == [2, 2, 1, 1, 4, 4, 3, 0]
    assert s.semantic.dtype == np.int64 and s.semantic.tolist() == [4, 4, -100, -100, 0, 19, -100, 18]
    # group ids kept as they are (3, 7, 9: never renumbered); segment 1000 is in groups 7 and 9 -> 9
    assert s.instance.dtype == np.int64 and s.instance.tolist() == [3, 3, 7, 7, 9, 9, -1, -1]
    m = s.meta
    assert (m["overlapping_segments"], m["unknown_segments"], m["empty_group_ids"]) == (1, 2, [11])
    assert (m["num_instances"], m["num_groups"], m["num_annotated_points"]) == (3, 4, 6)
    assert m["segs_params"]["kThresh"] == "0.01" and m["segs_params"]["segMinVerts"] == "20"
    assert m["preparer_version"] == PREPARER_VERSION and m["num_faces"] == 3
    assert m["instance_labels"] == {"3": "chair", "7": "bathtub", "9": "wall", "11": "lamp"}
    st = files["mesh"].stat()
    assert m["source"]["mesh"] == {"file": files["mesh"].name, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def test_later_group_wins_whatever_the_order(tmp_path: Path) -> None:
    groups = [SegGroup(9, 9, "a", [1000, 3, 7]), SegGroup(2, 2, "b", [7, 3]), SegGroup(5, 5, "c", [3, 55])]
    write_scan(tmp_path / "s", groups=groups)
    s = prepare_scene(tmp_path / "s", "s")
    # 3 -> 9, 2, 5 (5 wins); 7 -> 9, 2 (2 wins); 1000 -> 9; 55 -> 5
    assert s.instance.tolist() == [-1, -1, 2, 2, 9, 9, 5, 5]
    assert s.meta["overlapping_segments"] == 2 and s.meta["unknown_segments"] == 0


def test_assign_instances_edge_cases() -> None:
    uniq = np.array([1, 5, 9])
    inst, stats = assign_instances(uniq, [], Path("agg.json"))  # a scan without any annotated object
    assert inst.tolist() == [-1, -1, -1] and stats == {"unknown_segments": 0, "overlapping_segments": 0,
                                                       "empty_group_ids": []}
    groups = [SegGroup(4, 4, "x", [77]), SegGroup(6, 6, "y", []), SegGroup(2, 2, "z", [9, 1])]
    inst, stats = assign_instances(uniq, groups, Path("agg.json"))
    assert inst.tolist() == [2, -1, 2] and stats["empty_group_ids"] == [4, 6] and stats["unknown_segments"] == 1


def test_saved_scene_round_trip(tmp_path: Path) -> None:
    write_scan(tmp_path / "raw" / "scene0100_00")
    s = prepare_scene(tmp_path / "raw" / "scene0100_00")
    back = PreparedScene.load(s.save(tmp_path / "out"))
    for name in ("coord", "color", "superpoint", "semantic", "instance"):
        assert np.array_equal(getattr(back, name), getattr(s, name)), name
    assert back.meta["num_superpoints"] == 5 and back.meta["source"] == s.meta["source"]


# ------------------------------------------------------------------------------------ bad input
def expect_error(folder: Path, path: Path, match: str, record: str | None = None, field: str | None = None) -> None:
    with pytest.raises(DataFormatError, match=match) as e:
        prepare_scene(folder)
    assert e.value.path == str(path) and path.name in str(e.value)
    if record is not None:
        assert e.value.record == record and record in str(e.value)
    if field is not None:
        assert e.value.field == field and f"'{field}'" in str(e.value)


@pytest.fixture()
def bad(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path / "scene0200_00"
    return folder, write_scan(folder)


@pytest.mark.parametrize("role", ["mesh", "labels"])
def test_truncated_ply(bad: tuple[Path, dict[str, Path]], role: str) -> None:
    folder, files = bad
    data = files[role].read_bytes()
    files[role].write_bytes(data[: len(data) // 2])
    expect_error(folder, files[role], r"early end-of-file")


@pytest.mark.parametrize("role", ["segs", "aggregation"])
def test_malformed_json(bad: tuple[Path, dict[str, Path]], role: str) -> None:
    folder, files = bad
    files[role].write_text(files[role].read_text()[:-7])
    expect_error(folder, files[role], r"not valid JSON \(.*line 1 column")


@pytest.mark.parametrize("role", ["mesh", "labels", "segs", "aggregation"])
def test_missing_file(bad: tuple[Path, dict[str, Path]], role: str) -> None:
    folder, files = bad
    files[role].unlink()
    expect_error(folder, files[role], "file is missing")


def test_labels_with_other_vertex_count(bad: tuple[Path, dict[str, Path]]) -> None:
    folder, files = bad
    write_labels(files["labels"], Mesh(XYZ[:7], np.zeros((7, 3), np.uint8), np.zeros((0, 3))), NYU40[:7])
    expect_error(folder, files["labels"], "7 per-vertex entries, but .*_vh_clean_2.ply has 8", "vertex 7", "label")


def test_segs_of_wrong_length(bad: tuple[Path, dict[str, Path]]) -> None:
    folder, files = bad
    write_segs(files["segs"], folder.name, np.r_[SEG, 40])
    expect_error(folder, files["segs"], "9 per-vertex entries, but .* has 8", "vertex 8", "segIndices")


def test_group_id_not_object_id(bad: tuple[Path, dict[str, Path]]) -> None:
    folder, files = bad
    data = json.loads(files["aggregation"].read_text())
    data["segGroups"][2]["objectId"] = 10
    files["aggregation"].write_text(json.dumps(data))
    expect_error(folder, files["aggregation"], "id 9 != objectId 10", "segGroups[2]", "objectId")


def test_duplicate_group_id(bad: tuple[Path, dict[str, Path]]) -> None:
    folder, files = bad
    write_aggregation(files["aggregation"], folder.name, [*GROUPS, SegGroup(7, 7, "again", [55])])
    expect_error(folder, files["aggregation"], r"id 7 is already used by segGroups\[1\]", "segGroups[4]", "id")


def test_face_index_out_of_range(bad: tuple[Path, dict[str, Path]]) -> None:
    folder, files = bad
    write_mesh(files["mesh"], Mesh(XYZ, np.zeros((8, 3), np.uint8), np.array([[0, 1, 2], [5, 6, 8]])))
    expect_error(folder, files["mesh"], r"vertex index \[5, 6, 8\] out of range 0\.\.7", "face 1", "vertex_indices")


# ---------------------------------------------------------------------------------- batch driver
GOOD, BROKEN = ("scene0001_00", "scene0003_00"), "scene0002_00"


def three_scans(raw: Path) -> None:
    for sid in (*GOOD, BROKEN):
        write_scan(raw / "scans" / sid)
    write_segs(scan_files(raw / "scans" / BROKEN)["segs"], BROKEN, SEG[:5])  # wrong length


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_keeps_good_scenes_and_is_idempotent(tmp_path: Path, workers: int) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    three_scans(raw)
    report = prepare_scannet(raw, out, workers=workers, progress=False)
    assert report.prepared == list(GOOD) and report.skipped == [] and list(report.failed) == [BROKEN]
    assert "segs.json" in report.failed[BROKEN] and "'segIndices'" in report.failed[BROKEN]
    assert BROKEN in report.summary() and "prepared 2, skipped 0" in report.summary()
    assert not (out / BROKEN).exists()
    assert sorted(p.name for p in out.iterdir()) == list(GOOD)  # no staging folder left behind
    for sid in GOOD:
        assert PreparedScene.load(out / sid).instance.tolist() == [3, 3, 7, 7, 9, 9, -1, -1]
        (out / sid / "marker").write_text("kept unless re-prepared")

    again = prepare_scannet(raw, out, workers=workers, progress=False)
    assert again.skipped == list(GOOD) and again.prepared == [] and list(again.failed) == [BROKEN]
    assert all((out / sid / "marker").exists() for sid in GOOD)

    os.utime(scan_files(raw / "scans" / GOOD[1])["aggregation"], ns=(1, 1))  # a source changed
    changed = prepare_scannet(raw, out, workers=workers, progress=False)
    assert changed.prepared == [GOOD[1]] and changed.skipped == [GOOD[0]]
    assert not (out / GOOD[1] / "marker").exists() and (out / GOOD[0] / "marker").exists()

    forced = prepare_scannet(raw, out, workers=workers, force=True, progress=False)
    assert forced.prepared == list(GOOD) and forced.skipped == [] and list(forced.failed) == [BROKEN]
    assert not any((out / sid / "marker").exists() for sid in GOOD)


def test_failed_rerun_keeps_previous_good_output(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    write_scan(raw / "scans" / GOOD[0])
    assert prepare_scannet(raw, out, progress=False).prepared == [GOOD[0]]
    before = PreparedScene.load(out / GOOD[0])
    scan_files(raw / "scans" / GOOD[0])["aggregation"].write_text("{not json")
    report = prepare_scannet(raw, out, force=True, progress=False)
    assert list(report.failed) == [GOOD[0]] and "aggregation.json" in report.failed[GOOD[0]]
    after = PreparedScene.load(out / GOOD[0])
    assert np.array_equal(after.instance, before.instance) and after.meta == before.meta
    assert sorted(p.name for p in out.iterdir()) == [GOOD[0]]


def test_split_file_and_flat_layout(tmp_path: Path) -> None:
    raw, out = tmp_path / "raw", tmp_path / "out"
    for sid in (*GOOD, BROKEN):
        write_scan(raw / sid)  # scans directly under raw_dir, no scans/ level
    split = tmp_path / "val.txt"
    split.write_text(f"# val\n{GOOD[1]}\n\nscene0999_00\n")
    report = prepare_scannet(raw, out, split_file=split, progress=False)
    assert report.prepared == [GOOD[1]] and list(report.failed) == ["scene0999_00"]
    assert "scan folder is missing" in report.failed["scene0999_00"]
    only = prepare_scannet(raw, out, scene_ids=[GOOD[0]], progress=False)
    assert only.prepared == [GOOD[0]] and only.failed == {}
    assert sorted(p.name for p in out.iterdir()) == list(GOOD)
    with pytest.raises(DataFormatError, match="split file is missing"):
        prepare_scannet(raw, out, split_file=tmp_path / "nope.txt", progress=False)
