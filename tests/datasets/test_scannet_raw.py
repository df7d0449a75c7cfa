"""Raw ScanNet file I/O: exact round trips, ScanNet's binary PLY header, and named errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataFormatError
from datasets.scannet import (
    Mesh,
    SegGroup,
    fast_read_labels,
    fast_read_mesh,
    read_aggregation,
    read_labels,
    read_mesh,
    read_segs,
    scan_files,
    write_aggregation,
    write_labels,
    write_mesh,
    write_segs,
)


def small_scan(folder: Path, n: int = 50, f: int = 80, seed: int = 0) -> tuple[Mesh, np.ndarray, np.ndarray, list]:
    """Write a random scan with the writers; returns what was written."""
    rng = np.random.default_rng(seed)
    mesh = Mesh(xyz=rng.normal(size=(n, 3)).astype(np.float32), rgb=rng.integers(0, 256, (n, 3), dtype=np.uint8),
                faces=rng.integers(0, n, (f, 3)).astype(np.int64))
    nyu40 = rng.integers(0, 41, n)
    seg = rng.choice([5, 17, 230, 4001], n)
    groups = [SegGroup(id=3, object_id=3, label="chair", segments=[5, 230]),
              SegGroup(id=7, object_id=7, label="kitchen counter", segments=[4001])]
    files = scan_files(folder)
    write_mesh(files["mesh"], mesh)
    write_labels(files["labels"], mesh, nyu40)
    write_segs(files["segs"], folder.name, seg)
    write_aggregation(files["aggregation"], folder.name, groups)
    return mesh, nyu40, seg, groups


def header(path: Path) -> str:
    data = path.read_bytes()
    return data[: data.index(b"end_header\n")].decode("ascii")


def test_round_trip_is_exact(tmp_path: Path) -> None:
    folder = tmp_path / "scene0001_00"
    mesh, nyu40, seg, groups = small_scan(folder)
    files = scan_files(folder)
    back = read_mesh(files["mesh"])
    assert back.xyz.dtype == np.float32 and np.array_equal(back.xyz, mesh.xyz)
    assert back.rgb.dtype == np.uint8 and np.array_equal(back.rgb, mesh.rgb)
    assert back.faces.dtype == np.int64 and np.array_equal(back.faces, mesh.faces)
    assert np.array_equal(read_labels(files["labels"], len(mesh.xyz)), nyu40)
    assert np.array_equal(read_segs(files["segs"], len(mesh.xyz)), seg)
    assert read_aggregation(files["aggregation"]) == groups
    segs_json = json.loads(files["segs"].read_text())
    assert segs_json["params"]["kThresh"] == "0.01" and segs_json["params"]["segMinVerts"] == "20"
    assert segs_json["sceneId"] == "scene0001_00"


def test_ply_header_is_scannet_binary_little_endian(tmp_path: Path) -> None:
    folder = tmp_path / "scene0001_00"
    small_scan(folder, n=50, f=80)
    files = scan_files(folder)
    vertex = ["property float x", "property float y", "property float z", "property uchar red",
              "property uchar green", "property uchar blue", "property uchar alpha"]
    face = ["element face 80", "property list uchar int vertex_indices"]
    expected = ["ply", "format binary_little_endian 1.0", "element vertex 50", *vertex, *face]
    assert header(files["mesh"]).splitlines() == expected
    labels_header = header(files["labels"]).splitlines()
    assert labels_header == ["ply", "format binary_little_endian 1.0", "element vertex 50", *vertex,
                             "property ushort label", *face]


def test_fast_readers_equal_reference(tmp_path: Path) -> None:
    folder = tmp_path / "scene0002_00"
    small_scan(folder, n=400, f=900, seed=3)
    files = scan_files(folder)
    ref, fast = read_mesh(files["mesh"]), fast_read_mesh(files["mesh"])
    for name in ("xyz", "rgb", "faces"):
        a, b = getattr(ref, name), getattr(fast, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert np.array_equal(read_labels(files["labels"]), fast_read_labels(files["labels"]))
    # a mesh without faces reads the same way too
    write_mesh(tmp_path / "nofaces.ply", Mesh(ref.xyz, ref.rgb, np.zeros((0, 3), np.int64)))
    assert fast_read_mesh(tmp_path / "nofaces.ply").faces.shape == (0, 3)


def test_fast_reader_defers_to_reference_on_quads(tmp_path: Path) -> None:
    from plyfile import PlyData, PlyElement

    v = np.zeros(4, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    f = np.empty(1, dtype=[("vertex_indices", "i4", (4,))])
    f["vertex_indices"] = [0, 1, 2, 3]
    path = tmp_path / "quad.ply"
    PlyData([PlyElement.describe(v, "vertex"), PlyElement.describe(f, "face")], byte_order="<").write(str(path))
    with pytest.raises(DataFormatError) as ref:
        read_mesh(path)
    with pytest.raises(DataFormatError) as fast:
        fast_read_mesh(path)
    assert str(fast.value) == str(ref.value) and ref.value.field == "vertex_indices"


# ------------------------------------------------------------------------------------ bad input
@pytest.fixture()
def scan(tmp_path: Path) -> dict[str, Path]:
    small_scan(tmp_path / "scene0003_00", n=60, f=100)
    return scan_files(tmp_path / "scene0003_00")


@pytest.mark.parametrize("reader", [read_mesh, fast_read_mesh])
def test_truncated_ply_names_element_row_and_property(scan: dict[str, Path], reader) -> None:
    data = scan["mesh"].read_bytes()
    scan["mesh"].write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError) as e:
        reader(scan["mesh"])
    msg = str(e.value)
    assert e.value.path == str(scan["mesh"]) and "early end-of-file" in msg
    assert "element 'face'" in msg and "row" in msg and "vertex_indices" in msg


def test_truncated_labels_ply(scan: dict[str, Path]) -> None:
    data = scan["labels"].read_bytes()
    scan["labels"].write_bytes(data[: len(data) // 2])
    for reader in (read_labels, fast_read_labels):
        with pytest.raises(DataFormatError, match="early end-of-file") as e:
            reader(scan["labels"])
        assert e.value.path == str(scan["labels"])


@pytest.mark.parametrize("role,reader", [("segs", read_segs), ("aggregation", read_aggregation)])
def test_malformed_json(scan: dict[str, Path], role: str, reader) -> None:
    scan[role].write_text('{"segIndices": [1, 2,')
    with pytest.raises(DataFormatError, match=r"not valid JSON .*line 1 column") as e:
        reader(scan[role])
    assert e.value.path == str(scan[role])


@pytest.mark.parametrize("role", ["mesh", "labels", "segs", "aggregation"])
def test_missing_file(scan: dict[str, Path], role: str) -> None:
    scan[role].unlink()
    reader = {"mesh": read_mesh, "labels": read_labels, "segs": read_segs, "aggregation": read_aggregation}[role]
    with pytest.raises(DataFormatError, match="file is missing") as e:
        reader(scan[role])
    assert e.value.path == str(scan[role])


def test_vertex_count_mismatch(scan: dict[str, Path]) -> None:
    with pytest.raises(DataFormatError, match="60 vertices, but the mesh has 61") as e:
        read_labels(scan["labels"], num_vertices=61)
    assert e.value.field == "label"
    with pytest.raises(DataFormatError, match="60 entries, but the mesh has 59") as e:
        read_segs(scan["segs"], num_vertices=59)
    assert e.value.field == "segIndices"


def test_group_id_differs_from_object_id(scan: dict[str, Path]) -> None:
    data = json.loads(scan["aggregation"].read_text())
    data["segGroups"][1]["objectId"] = 8
    scan["aggregation"].write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match="id 7 != objectId 8") as e:
        read_aggregation(scan["aggregation"])
    assert (e.value.record, e.value.field) == ("segGroups[1]", "objectId")
    assert "segGroups[1]" in str(e.value) and "'objectId'" in str(e.value)


@pytest.mark.parametrize("reader", [read_mesh, fast_read_mesh])
def test_face_index_out_of_range(tmp_path: Path, reader) -> None:
    xyz = np.zeros((5, 3), np.float32)
    write_mesh(tmp_path / "m.ply", Mesh(xyz, np.zeros((5, 3), np.uint8), np.array([[0, 1, 2], [2, 3, 5]])))
    with pytest.raises(DataFormatError, match=r"vertex index \[2, 3, 5\] out of range 0\.\.4") as e:
        reader(tmp_path / "m.ply")
    assert (e.value.record, e.value.field) == ("face 1", "vertex_indices")
