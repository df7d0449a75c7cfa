"""Pointcept per-point .npy scenes: a hand-built folder with known answers, bad input, and the real scene0011."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataFormatError
from datasets.scannet import PreparedScene, convert_pointcept, discover_pointcept, read_pointcept_scene

RAW_XYZ = np.array([[1, 2, 3], [3, 2, 3], [1, 6, 3], [3, 6, 7]], np.float32)  # mean (2, 4, 4)


def write_folder(folder: Path, **override: np.ndarray) -> Path:
    arrays = {
        "coord": RAW_XYZ, "color": np.array([[0, 1, 2], [3, 4, 5], [250, 251, 252], [9, 9, 9]], np.uint8),
        "normal": np.tile(np.float32([0, 0, 1]), (4, 1)), "instance": np.array([3, -1, 7, 3], np.int64),
        "segment20": np.array([4, -1, 19, 0], np.int64), "segment200": np.array([5, -1, 30, 1], np.int64),
    }
    arrays.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


def test_read_known_answers(tmp_path: Path) -> None:
    s = read_pointcept_scene(write_folder(tmp_path / "scene0500_00"))
    assert s.scene_id == "scene0500_00" and s.superpoint is None
    assert s.coord.dtype == np.float32 and np.array_equal(s.coord, RAW_XYZ - np.float32([2, 4, 4]))
    assert s.meta["centre"] == [2.0, 4.0, 4.0] and s.meta["layout"] == "pointcept"
    assert s.color.dtype == np.uint8 and s.color[2].tolist() == [250, 251, 252]
    assert s.semantic.dtype == np.int64 and s.semantic.tolist() == [4, -100, 19, 0]
    assert s.instance.dtype == np.int64 and s.instance.tolist() == [3, -1, 7, 3]  # ids kept, not renumbered
    assert (s.meta["num_instances"], s.meta["num_annotated_points"]) == (2, 3)


def test_convert_then_load_without_superpoints(tmp_path: Path) -> None:
    src, out = tmp_path / "pointcept", tmp_path / "out"
    write_folder(src / "val" / "scene0500_00")
    write_folder(src / "train" / "scene0501_00", instance=np.array([0, 0, -1, 1]))
    assert set(discover_pointcept(src)) == {"scene0500_00", "scene0501_00"}
    report = convert_pointcept(src, out, progress=False)
    assert report.prepared == ["scene0500_00", "scene0501_00"] and report.failed == {}
    assert not (out / "scene0500_00" / "superpoint.npy").exists()
    with pytest.raises(DataFormatError, match="this scene has no superpoints") as e:
        PreparedScene.load(out / "scene0500_00")
    assert e.value.path.endswith("superpoint.npy")
    back = PreparedScene.load(out / "scene0501_00", require_superpoints=False)
    assert back.superpoint is None and back.instance.tolist() == [0, 0, -1, 1]
    assert back.meta["num_superpoints"] is None and back.meta["layout"] == "pointcept"
    assert convert_pointcept(src, out, progress=False).skipped == ["scene0500_00", "scene0501_00"]


def test_convert_reports_a_bad_scene_and_keeps_the_others(tmp_path: Path) -> None:
    src, out = tmp_path / "pointcept", tmp_path / "out"
    write_folder(src / "scene0500_00")
    write_folder(src / "scene0501_00", segment20=np.array([4, 20, 0, 0]))
    report = convert_pointcept(src, out, progress=False)
    assert report.prepared == ["scene0500_00"] and list(report.failed) == ["scene0501_00"]
    assert "segment20.npy, point 1, field 'segment20'" in report.failed["scene0501_00"]
    assert sorted(p.name for p in out.iterdir()) == ["scene0500_00"]


@pytest.mark.parametrize("override,file,match,record,fld", [
    ({"segment20": np.array([4, -1, 25, 0])}, "segment20", r"value 25 out of range \(expected -1 or 0..19\)",
     "point 2", "segment20"),
    ({"instance": np.array([3, -1, 7])}, "instance", "3 rows, but coord.npy has 4", "point 3", "instance"),
    ({"normal": np.zeros((5, 3), np.float32)}, "normal", "5 rows, but coord.npy has 4", "point 4", "normal"),
    ({"color": np.array([[0, 1, 2], [3, 4, 5], [6, 7, 300], [9, 9, 9]])}, "color", "value .* out of range",
     "point 2", "color"),
    ({"coord": np.array([[1, 2, 3], [3, 2, np.nan], [1, 6, 3], [3, 6, 7]], np.float32)}, "coord",
     "expected finite xyz", "point 1", "coord"),
    ({"coord": RAW_XYZ[:, :2]}, "coord", r"expected a \(N, 3\) array", "array", "coord"),
])
def test_bad_arrays_name_file_record_field(tmp_path: Path, override: dict, file: str, match: str, record: str,
                                           fld: str) -> None:
    folder = write_folder(tmp_path / "scene0502_00", **override)
    with pytest.raises(DataFormatError, match=match) as e:
        read_pointcept_scene(folder)
    assert e.value.path == str(folder / f"{file}.npy") and (e.value.record, e.value.field) == (record, fld)


def test_missing_file(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "scene0503_00")
    (folder / "color.npy").unlink()
    with pytest.raises(DataFormatError, match="file is missing") as e:
        read_pointcept_scene(folder)
    assert e.value.path == str(folder / "color.npy")


# ------------------------------------------------------------------------------ real ScanNet scenes
def test_real_scene0011_00(realdata: Path) -> None:
    folder = realdata / "pointcept_scannet" / "scene0011_00"
    s = read_pointcept_scene(folder)
    assert s.num_points == 237_360 and s.scene_id == "scene0011_00"
    assert np.unique(s.instance[s.instance >= 0]).tolist() == list(range(33))
    assert int((s.instance >= 0).sum()) == 206_883 and s.meta["num_instances"] == 33
    assert int((s.instance == 25).sum()) == 5_743
    assert np.abs(s.coord.astype(np.float64).mean(0)).max() < 1e-4  # centred
    raw_xyz = np.load(folder / "coord.npy")
    assert np.allclose(s.coord + np.float32(s.meta["centre"]), raw_xyz, atol=1e-5)  # centring is all that changed
    seg20 = np.load(folder / "segment20.npy")
    assert np.array_equal(s.semantic == -100, seg20 == -1) and set(np.unique(s.semantic)) <= {-100, *range(20)}
    # object 25 is the kitchen counter: ScanNet-20 "counter" is id 11 (realdata/SOURCES.md)
    assert np.bincount(s.semantic[s.instance == 25][s.semantic[s.instance == 25] >= 0]).argmax() == 11


def test_real_convert_both_scenes(realdata: Path, tmp_path: Path) -> None:
    report = convert_pointcept(realdata / "pointcept_scannet", tmp_path, progress=False)
    assert report.prepared == ["scene0011_00", "scene0011_01"] and report.failed == {}
    s = PreparedScene.load(tmp_path / "scene0011_01", require_superpoints=False)
    assert s.num_points == 239_261 and s.superpoint is None and np.abs(s.coord.mean(0)).max() < 1e-3
