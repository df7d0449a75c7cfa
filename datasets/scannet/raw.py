"""Readers and writers of the four ScanNet v2 raw files of a scan (data spec §1).

- ``<scan>_vh_clean_2.ply``: binary little-endian PLY; vertex ``x y z`` float32, ``red green blue
  alpha`` uint8; face ``vertex_indices`` (uint8 count, int32 indices). Metres, +z up, raw scan frame.
- ``<scan>_vh_clean_2.labels.ply``: same vertices plus ``label`` (uint16 NYU40 id, 0 = unannotated);
  its colours are label colours and are never read.
- ``<scan>_vh_clean_2.0.010000.segs.json``: ``{"params", "sceneId", "segIndices": [N ints]}``.
- ``<scan>.aggregation.json``: ``{"sceneId", "appId", "segmentsFile", "segGroups": [{"id",
  "objectId", "segments", "label"}]}``.

Properties are read by name, never by column position. Every error names the file, the record and
the field (:class:`datasets.errors.DataFormatError`). The writers produce the same layout, so that
generated scenes go through exactly the same reading code as real ones.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyParseError

from datasets.errors import DataFormatError

SEGS_SUFFIX = "_vh_clean_2.0.010000.segs.json"
MESH_SUFFIX = "_vh_clean_2.ply"
LABELS_SUFFIX = "_vh_clean_2.labels.ply"
AGGREGATION_SUFFIX = ".aggregation.json"


def scan_files(scan_dir: str | Path, scan_id: str | None = None) -> dict[str, Path]:
    """Paths of the four raw files of ``scans/<scan_id>/`` (``scan_id`` defaults to the folder name)."""
    scan_dir = Path(scan_dir)
    scan_id = scan_id or scan_dir.name
    return {
        "mesh": scan_dir / f"{scan_id}{MESH_SUFFIX}",
        "labels": scan_dir / f"{scan_id}{LABELS_SUFFIX}",
        "segs": scan_dir / f"{scan_id}{SEGS_SUFFIX}",
        "aggregation": scan_dir / f"{scan_id}{AGGREGATION_SUFFIX}",
    }


@dataclass
class Mesh:
    """A ScanNet mesh: ``xyz`` (N, 3) float32 metres, ``rgb`` (N, 3) uint8, ``faces`` (F, 3) int64."""

    xyz: np.ndarray
    rgb: np.ndarray
    faces: np.ndarray


@dataclass
class SegGroup:
    """One annotated object of ``aggregation.json``."""

    id: int
    object_id: int
    label: str
    segments: list[int]


def _read_ply(path: Path) -> PlyData:
    if not path.is_file():
        raise DataFormatError(path, "file is missing")
    try:
        return PlyData.read(str(path))
    except (PlyParseError, ValueError, EOFError, OSError, IndexError, struct.error) as e:
        raise DataFormatError(path, f"not a readable PLY file ({type(e).__name__}: {e})") from e


def _vertex_property(ply: PlyData, path: Path, name: str) -> np.ndarray:
    try:
        vertex = ply["vertex"]
    except KeyError as e:
        raise DataFormatError(path, "no 'vertex' element", field="vertex") from e
    names = [p.name for p in vertex.properties]
    if name not in names:
        raise DataFormatError(path, f"vertex property missing (has {names})", record="vertex", field=name)
    return np.asarray(vertex[name])


def read_mesh(path: str | Path) -> Mesh:
    """Read ``<scan>_vh_clean_2.ply``: vertices in file order, colours, triangle faces."""
    path = Path(path)
    ply = _read_ply(path)
    xyz = np.stack([_vertex_property(ply, path, k) for k in ("x", "y", "z")], 1).astype(np.float32)
    rgb = np.stack([_vertex_property(ply, path, k) for k in ("red", "green", "blue")], 1)
    if not np.issubdtype(rgb.dtype, np.integer) or rgb.min(initial=0) < 0 or rgb.max(initial=0) > 255:
        raise DataFormatError(path, f"colours must be uint8 0..255, got {rgb.dtype}", record="vertex",
                              field="red/green/blue")
    if not np.isfinite(xyz).all():
        bad = int(np.flatnonzero(~np.isfinite(xyz).all(1))[0])
        raise DataFormatError(path, "non-finite coordinate", record=f"vertex {bad}", field="x/y/z")
    faces = np.zeros((0, 3), dtype=np.int64)
    if "face" in [e.name for e in ply.elements]:
        face_props = [prop.name for prop in ply["face"].properties]
        if "vertex_indices" not in face_props:
            raise DataFormatError(path, f"face property missing (has {face_props})", record="face",
                                  field="vertex_indices")
        raw = ply["face"]["vertex_indices"]
        if len(raw):
            try:
                faces = np.stack([np.asarray(f, dtype=np.int64) for f in raw])
            except ValueError as e:
                raise DataFormatError(path, "faces must all be triangles", record="face",
                                      field="vertex_indices") from e
            if faces.ndim != 2 or faces.shape[1] != 3:
                raise DataFormatError(path, f"faces must be triangles, got shape {faces.shape}", record="face",
                                      field="vertex_indices")
            bad = np.flatnonzero(((faces < 0) | (faces >= len(xyz))).any(1))
            if len(bad):
                raise DataFormatError(path, f"vertex index {faces[bad[0]].tolist()} out of range 0..{len(xyz) - 1}",
                                      record=f"face {int(bad[0])}", field="vertex_indices")
    return Mesh(xyz=xyz, rgb=rgb.astype(np.uint8), faces=faces)


def read_labels(path: str | Path, num_vertices: int | None = None) -> np.ndarray:
    """Read the NYU40 ``label`` of every vertex of ``<scan>_vh_clean_2.labels.ply`` as (N,) int64."""
    path = Path(path)
    labels = _vertex_property(_read_ply(path), path, "label")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(path, f"NYU40 labels must be integers, got {labels.dtype}", record="vertex",
                              field="label")
    labels = labels.astype(np.int64)
    if num_vertices is not None and len(labels) != num_vertices:
        raise DataFormatError(path, f"{len(labels)} vertices, but the mesh has {num_vertices}", field="label")
    return labels


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataFormatError(path, "file is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(data).__name__}")
    return data


def read_segs(path: str | Path, num_vertices: int | None = None) -> np.ndarray:
    """Read ``segIndices`` of ``<scan>_vh_clean_2.0.010000.segs.json`` as (N,) int64 (ids not compacted)."""
    path = Path(path)
    data = _read_json(path)
    if "segIndices" not in data:
        raise DataFormatError(path, "key missing", field="segIndices")
    raw = data["segIndices"]
    if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in raw):
        first = next((i for i, v in enumerate(raw) if not isinstance(v, int) or isinstance(v, bool)), None) \
            if isinstance(raw, list) else None
        raise DataFormatError(path, "must be a list of integers" + (f" (entry {first} is {raw[first]!r})"
                              if first is not None else ""), field="segIndices")
    seg = np.asarray(raw, dtype=np.int64)
    if seg.ndim != 1:
        raise DataFormatError(path, "must be a flat list", field="segIndices")
    if num_vertices is not None and len(seg) != num_vertices:
        raise DataFormatError(path, f"{len(seg)} entries, but the mesh has {num_vertices} vertices",
                              field="segIndices")
    return seg


def _json_int(path: Path, value: object, record: str, field: str) -> int:
    """A JSON integer (not a bool, float or string), else a named error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(path, f"must be an integer, got {value!r}", record=record, field=field)
    return value


def read_aggregation(path: str | Path) -> list[SegGroup]:
    """Read the ``segGroups`` of ``<scan>.aggregation.json``; checks ``id == objectId`` (spec §1.5).

    ``id`` / ``objectId`` / each segment must be JSON integers and ``label`` a string; nothing is coerced.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data.get("segGroups"), list):
        raise DataFormatError(path, "key missing or not a list", field="segGroups")
    groups = []
    for i, g in enumerate(data["segGroups"]):
        record = f"segGroups[{i}]"
        if not isinstance(g, dict):
            raise DataFormatError(path, "must be an object", record=record)
        for key in ("id", "label", "segments"):
            if key not in g:
                raise DataFormatError(path, "key missing", record=record, field=key)
        # Types are checked, not coerced: int() would turn 1.7 into 1, True into 1 and the string
        # "123" (iterated) into segments [1, 2, 3] -- a wrong mask with no error.
        gid = _json_int(path, g["id"], record, "id")
        oid = _json_int(path, g.get("objectId", gid), record, "objectId")
        if not isinstance(g["segments"], list):
            raise DataFormatError(path, f"must be a list of integers, got {type(g['segments']).__name__}",
                                  record=record, field="segments")
        segments = [_json_int(path, s, record, f"segments[{j}]") for j, s in enumerate(g["segments"])]
        if not isinstance(g["label"], str):
            raise DataFormatError(path, f"must be a string, got {g['label']!r}", record=record, field="label")
        if gid != oid:
            # ScanRefer object ids are objectId; the original pipeline writes id. They must agree.
            raise DataFormatError(path, f"id {gid} != objectId {oid}", record=record, field="objectId")
        groups.append(SegGroup(id=gid, object_id=oid, label=g["label"], segments=segments))
    return groups


# ---------------------------------------------------------------------------------------- writers
def _vertex_array(xyz: np.ndarray, rgb: np.ndarray, extra: dict[str, np.ndarray] | None = None) -> np.ndarray:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"),
              ("alpha", "u1")]
    extra = extra or {}
    fields += [(k, v.dtype.str) for k, v in extra.items()]
    v = np.empty(len(xyz), dtype=fields)
    v["x"], v["y"], v["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    v["red"], v["green"], v["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v["alpha"] = 255
    for k, arr in extra.items():
        v[k] = arr
    return v


_PLY_TYPES = {"<f4": "float", "|u1": "uchar", "<u2": "ushort", "<i4": "int", "<u4": "uint", "<f8": "double"}


def _write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    """Binary little-endian PLY written as header + two raw blocks (ScanNet's layout).

    plyfile writes list properties one row at a time in Python (seconds for a 300k-face mesh); the
    face block is a fixed record (uint8 count = 3, three int32 indices), so it is written in one go.
    Written to a temporary name and renamed, so a reader never sees a partial file.
    """
    lines = ["ply", "format binary_little_endian 1.0", f"element vertex {len(vertices)}"]
    for name in vertices.dtype.names:
        lines.append(f"property {_PLY_TYPES[vertices.dtype[name].str]} {name}")
    lines += [f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    face_block = np.empty(len(faces), dtype=[("n", "u1"), ("v", "<i4", (3,))])
    face_block["n"] = 3
    face_block["v"] = faces
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("ascii"))
        f.write(vertices.tobytes())
        f.write(face_block.tobytes())
    tmp.replace(path)


def write_mesh(path: str | Path, mesh: Mesh) -> None:
    """Write ``<scan>_vh_clean_2.ply`` (binary little-endian, ScanNet's property layout)."""
    _write_ply(Path(path), _vertex_array(mesh.xyz.astype(np.float32), mesh.rgb.astype(np.uint8)), mesh.faces)


def write_labels(path: str | Path, mesh: Mesh, nyu40: np.ndarray, label_rgb: np.ndarray | None = None) -> None:
    """Write ``<scan>_vh_clean_2.labels.ply``: the mesh with a uint16 NYU40 ``label`` per vertex.

    ``label_rgb`` (N, 3) uint8 are the visualisation colours ScanNet stores there (grey if None).
    """
    rgb = label_rgb if label_rgb is not None else np.full((len(mesh.xyz), 3), 128, np.uint8)
    _write_ply(Path(path), _vertex_array(mesh.xyz.astype(np.float32), rgb, {"label": nyu40.astype("<u2")}),
               mesh.faces)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    tmp.replace(path)


def write_segs(path: str | Path, scene_id: str, seg_indices: np.ndarray, k_thresh: float = 0.01,
               seg_min_verts: int = 20) -> None:
    """Write ``<scan>_vh_clean_2.0.010000.segs.json`` with ScanNet's keys (params stored as strings)."""
    params = {"kThresh": f"{k_thresh:g}", "segMinVerts": str(seg_min_verts), "minPoints": "750",
              "maxPoints": "5000", "thinThresh": "0.05", "flatThresh": "0.001", "minLength": "0.02",
              "maxLength": "1"}
    _write_json(Path(path), {"params": params, "sceneId": scene_id,
                             "segIndices": [int(s) for s in seg_indices]})


def write_aggregation(path: str | Path, scene_id: str, groups: list[SegGroup]) -> None:
    """Write ``<scan>.aggregation.json`` with ScanNet's keys."""
    _write_json(Path(path), {
        "sceneId": f"scannet.{scene_id}", "appId": "grounding-toolkit.synthetic",
        "segmentsFile": f"scannet.{scene_id}{SEGS_SUFFIX}",
        "segGroups": [{"id": g.id, "objectId": g.object_id, "label": g.label, "segments": list(g.segments)}
                      for g in groups],
    })
