"""Scene inputs of the 3D predictor, normalised as ``grounding prepare scannet`` prepares training scenes.

Accepted inputs (:func:`load_scene`):

- ``.ply``: a mesh (vertices + triangle or polygon faces) or a bare point cloud (vertices only); colours from
  ``red/green/blue`` (uint8, or float in [0, 1]), grey when absent;
- ``.pcd``: a point cloud (Open3D), colours in [0, 1];
- ``.npy``: (N, 6) ``xyz`` metres + ``rgb`` 0..255, or (N, 7) with a superpoint id in the last column;
- a ScanNet raw scan folder: ``<scene>_vh_clean_2.ply`` and, when present, its ``.0.010000.segs.json``
  (the over-segmentation the models were trained with); axis alignment from ``<scene>.txt`` on request;
- a prepared scene folder (``meta.json`` + ``coord.npy`` ...; :class:`PreparedScene`), used as it is;
- arrays: an (N, 6) / (N, 7) array like the ``.npy`` file, or a :class:`PreparedScene`.

Normalisation (what the preparer does, so predictions match ``grounding eval`` on a prepared scan): optional
axis alignment (4x4, applied to the input coordinates), then centring on the float64 vertex mean, coordinates
float32 metres; colours uint8 (the model's transform maps them to ``rgb / 127.5 - 1``). Nothing is subsampled:
point ``i`` of the result is point ``i`` of the input. Superpoints, when the input has none: ScanNet's mesh
segmentation on the faces (:func:`~pointcloud.superpoints.mesh_superpoints`) or its k-nearest-neighbour variant
for point clouds (:func:`~pointcloud.superpoints.point_cloud_superpoints`), computed on the input coordinates.
Given superpoint ids are compacted with ``np.unique`` (sorted), as the preparer compacts ``segIndices``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DataFormatError
from datasets.scannet.prepare import fast_read_mesh
from datasets.scannet.raw import MESH_SUFFIX, SEGS_SUFFIX, read_segs
from datasets.scannet.scene import PreparedScene

SceneSource = str | Path | np.ndarray | PreparedScene


@dataclass
class Scene3D:
    """A scene ready for the predictor.

    Attributes:
        scene_id: a name (file stem or folder name).
        coord: (N, 3) float32 metres, centred on the (aligned) input's mean, z-up as the input.
        color: (N, 3) uint8 RGB.
        superpoint: (N,) int64 ids 0..S-1.
        centre: (3,) float64 the mean that was subtracted (in the aligned frame).
        alignment: (4, 4) float64 axis alignment applied before centring (identity when none).
        superpoint_source: ``"input"`` (given by the file or the caller) or the function that computed them.
        source: the path it was read from ("" for arrays).
    """

    scene_id: str
    coord: np.ndarray
    color: np.ndarray
    superpoint: np.ndarray
    centre: np.ndarray
    alignment: np.ndarray
    superpoint_source: str
    source: str = ""

    @property
    def num_points(self) -> int:
        return len(self.coord)

    def input_coordinates(self) -> np.ndarray:
        """(N, 3) float64 metres in the input's own frame (centring and alignment undone)."""
        aligned = self.coord.astype(np.float64) + self.centre
        inv = np.linalg.inv(self.alignment)
        return aligned @ inv[:3, :3].T + inv[:3, 3]

    def to_prepared(self) -> PreparedScene:
        """The scene as a label-free :class:`PreparedScene` (semantic -100, instance -1) for the transforms."""
        n = self.num_points
        return PreparedScene(self.scene_id, self.coord, self.color, self.superpoint,
                             np.full(n, -100, dtype=np.int64), np.full(n, -1, dtype=np.int64),
                             meta={"source": self.source})


def read_axis_alignment(path: str | Path) -> np.ndarray:
    """The 4x4 ``axisAlignment`` matrix of a ScanNet ``<scene>.txt`` (row-major, 16 numbers)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "axis alignment file is missing")
    for line in path.read_text().splitlines():
        if line.strip().startswith("axisAlignment"):
            values = re.split(r"\s+", line.split("=", 1)[1].strip()) if "=" in line else []
            try:
                matrix = np.asarray([float(v) for v in values], dtype=np.float64)
            except ValueError as e:
                raise DataFormatError(path, f"not numbers ({e})", field="axisAlignment") from e
            if matrix.size != 16:
                raise DataFormatError(path, f"expected 16 numbers, got {matrix.size}", field="axisAlignment")
            return matrix.reshape(4, 4)
    raise DataFormatError(path, "no 'axisAlignment = ...' line", field="axisAlignment")


def _colors_uint8(rgb: np.ndarray, path: str | Path, unit_range: bool) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if unit_range:
        rgb = rgb * 255.0
    if len(rgb) and (not np.isfinite(rgb).all() or rgb.min() < -0.5 or rgb.max() > 255.5):
        raise DataFormatError(path, "colours must lie in 0..255 (or 0..1 for float .ply / .pcd colours)",
                              field="rgb")
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(xyz (N, 3) float32, rgb (N, 3) uint8, faces (F, 3) int64) of any PLY; polygons are fan-triangulated."""
    from plyfile import PlyData

    try:
        mesh = fast_read_mesh(path)  # ScanNet layout (uint8 colours, triangles): the preparer's exact reader
        return mesh.xyz, mesh.rgb, mesh.faces
    except DataFormatError:
        pass
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as e:  # noqa: BLE001 - any parse problem becomes a named error
        raise DataFormatError(path, f"not a readable PLY file ({type(e).__name__}: {e})") from e
    names = [p.name for p in vertex.properties]
    if not {"x", "y", "z"} <= set(names):
        raise DataFormatError(path, f"vertex coordinates missing (has {names})", record="vertex", field="x/y/z")
    xyz = np.stack([np.asarray(vertex[k]) for k in "xyz"], 1).astype(np.float32)
    rgb = np.full((len(xyz), 3), 128, dtype=np.uint8)
    for keys in (("red", "green", "blue"), ("r", "g", "b"), ("diffuse_red", "diffuse_green", "diffuse_blue")):
        if set(keys) <= set(names):
            raw = np.stack([np.asarray(vertex[k]) for k in keys], 1)
            rgb = _colors_uint8(raw, path, unit_range=np.issubdtype(raw.dtype, np.floating))
            break
    faces = np.zeros((0, 3), dtype=np.int64)
    if "face" in [e.name for e in ply.elements] and ply["face"].count:
        prop = next((p.name for p in ply["face"].properties if p.name in ("vertex_indices", "vertex_index")), None)
        if prop is None:
            raise DataFormatError(path, "face element without vertex_indices", record="face", field="vertex_indices")
        tris = [np.asarray(f, dtype=np.int64) for f in ply["face"][prop]]
        fan = [np.stack([np.full(len(f) - 2, f[0]), f[1:-1], f[2:]], 1) for f in tris if len(f) >= 3]
        faces = np.concatenate(fan) if fan else faces
        if len(faces) and (faces.min() < 0 or faces.max() >= len(xyz)):
            raise DataFormatError(path, f"face vertex index out of range 0..{len(xyz) - 1}", record="face",
                                  field="vertex_indices")
    return xyz, rgb, faces


def _read_pcd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import open3d as o3d

    # keep every point: dropping NaNs would break "mask[i] is input point i"
    cloud = o3d.io.read_point_cloud(str(path), remove_nan_points=False, remove_infinite_points=False)
    xyz = np.asarray(cloud.points, dtype=np.float32)
    if len(xyz) == 0:
        raise DataFormatError(path, "no points (not a readable .pcd file?)")
    rgb = (_colors_uint8(np.asarray(cloud.colors), path, unit_range=True) if cloud.has_colors()
           else np.full((len(xyz), 3), 128, dtype=np.uint8))
    return xyz, rgb


def _read_array(arr: np.ndarray, path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if arr.ndim != 2 or arr.shape[1] not in (6, 7):
        raise DataFormatError(path, f"expected an (N, 6) xyz + rgb array (or (N, 7) with superpoint ids), "
                              f"got shape {arr.shape}")
    sp = None
    if arr.shape[1] == 7:
        sp = np.asarray(arr[:, 6])
        if not np.all(sp == np.round(sp)):
            raise DataFormatError(path, "column 7 must hold integer superpoint ids", field="superpoint")
        sp = sp.astype(np.int64)
    return arr[:, :3].astype(np.float32), _colors_uint8(arr[:, 3:6], path, unit_range=False), sp


def compute_superpoints(xyz: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, str]:
    """Superpoints for an input without them: mesh segmentation with faces, kNN segmentation without."""
    from pointcloud.superpoints import mesh_superpoints, point_cloud_superpoints

    if len(faces):
        return mesh_superpoints(xyz, faces), "mesh_superpoints"
    return point_cloud_superpoints(xyz), "point_cloud_superpoints"


def normalise_scene(scene_id: str, xyz: np.ndarray, rgb: np.ndarray, superpoint: np.ndarray | None,
                    faces: np.ndarray, alignment: np.ndarray | None = None, source: str = "") -> Scene3D:
    """Align (optional), centre like the preparer, and attach superpoints (given, else computed).

    Args:
        xyz: (N, 3) float metres, input frame. rgb: (N, 3) uint8. superpoint: (N,) ints or None.
        faces: (F, 3) int vertex indices ((0, 3) for point clouds). alignment: (4, 4) or None.
    """
    xyz = np.asarray(xyz, dtype=np.float32)
    if len(xyz) == 0:
        raise DataFormatError(source or scene_id, "the scene has no points")
    if not np.isfinite(xyz).all():
        bad = int(np.flatnonzero(~np.isfinite(xyz).all(1))[0])
        raise DataFormatError(source or scene_id, "non-finite coordinate", record=f"point {bad}", field="xyz")
    if superpoint is not None:
        if len(superpoint) != len(xyz):
            raise DataFormatError(source or scene_id, f"{len(superpoint)} superpoint ids for {len(xyz)} points",
                                  field="superpoint")
        sp, sp_source = np.unique(superpoint, return_inverse=True)[1].reshape(-1).astype(np.int64), "input"
    else:
        sp, sp_source = compute_superpoints(xyz, faces)
    matrix = np.eye(4) if alignment is None else np.asarray(alignment, dtype=np.float64).reshape(4, 4)
    aligned = xyz if alignment is None else (xyz.astype(np.float64) @ matrix[:3, :3].T + matrix[:3, 3]).astype(
        np.float32)
    centre = aligned.mean(axis=0, dtype=np.float64)  # as prepare_scene: float64 mean, float32 result
    coord = (aligned - centre).astype(np.float32)
    return Scene3D(scene_id, coord, np.asarray(rgb, dtype=np.uint8), sp, centre, matrix, sp_source, source)


def _raw_scan(folder: Path, superpoint: np.ndarray | None, axis_alignment: bool | str | Path | None) -> Scene3D:
    scene_id = folder.name
    mesh = fast_read_mesh(folder / f"{scene_id}{MESH_SUFFIX}")
    segs = folder / f"{scene_id}{SEGS_SUFFIX}"
    if superpoint is None and segs.is_file():
        superpoint = read_segs(segs, num_vertices=len(mesh.xyz))
    if axis_alignment is True:
        axis_alignment = folder / f"{scene_id}.txt"
    alignment = read_axis_alignment(axis_alignment) if axis_alignment else None
    return normalise_scene(scene_id, mesh.xyz, mesh.rgb, superpoint, mesh.faces, alignment, str(folder))


def load_scene(source: SceneSource, superpoint: np.ndarray | None = None,
               axis_alignment: bool | str | Path | np.ndarray | None = None, scene_id: str | None = None) -> Scene3D:
    """Read and normalise any accepted input (module docstring).

    Args:
        source: a path (``.ply``, ``.pcd``, ``.npy``, raw scan folder, prepared scene folder), an (N, 6|7)
            array or a :class:`PreparedScene`.
        superpoint: (N,) ids overriding whatever the input has (e.g. to compare inputs with one partition).
        axis_alignment: a 4x4 matrix or a ScanNet ``<scene>.txt``; ``True`` for a raw scan folder reads its own
            ``<scene>.txt``. Not applicable to prepared scenes (already in their training frame).
        scene_id: name of the scene (default: file stem or folder name).
    """
    if isinstance(source, Scene3D):
        return source if superpoint is None else _from_prepared(source.to_prepared(), superpoint, source.source)
    if isinstance(source, PreparedScene):
        return _from_prepared(source, superpoint, str(source.meta.get("source", "")))
    if isinstance(source, np.ndarray):
        xyz, rgb, sp = _read_array(source, "<array>")
        return normalise_scene(scene_id or "scene", xyz, rgb, superpoint if superpoint is not None else sp,
                               np.zeros((0, 3), np.int64), _alignment(axis_alignment), "")
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"scene {path} does not exist")
    if path.is_dir():
        if (path / "meta.json").is_file():
            if axis_alignment is not None and axis_alignment is not False:
                raise ValueError(f"{path} is a prepared scene: it is already in its training frame, so it takes "
                                 "no axis alignment")
            return _from_prepared(PreparedScene.load(path, require_superpoints=False), superpoint, str(path))
        if (path / f"{path.name}{MESH_SUFFIX}").is_file():
            return _raw_scan(path, superpoint, axis_alignment)
        raise DataFormatError(path, f"not a scene folder: expected a ScanNet scan ({path.name}{MESH_SUFFIX}) or a "
                              "prepared scene (meta.json)")
    name = scene_id or path.stem
    suffix = path.suffix.lower()
    faces = np.zeros((0, 3), dtype=np.int64)
    if suffix == ".ply":
        xyz, rgb, faces = _read_ply(path)
        sp = None
    elif suffix == ".pcd":
        xyz, rgb = _read_pcd(path)
        sp = None
    elif suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DataFormatError(path, f"not a readable .npy array ({e})") from e
        xyz, rgb, sp = _read_array(arr, path)
    else:
        raise DataFormatError(path, "unknown scene format: expected .ply, .pcd, .npy or a scene folder")
    return normalise_scene(name, xyz, rgb, superpoint if superpoint is not None else sp, faces,
                           _alignment(axis_alignment), str(path))


def _alignment(value: bool | str | Path | np.ndarray | None) -> np.ndarray | None:
    if value is None or value is False:
        return None
    if value is True:
        raise ValueError("axis_alignment=True reads <scene>.txt of a ScanNet scan folder; for other inputs give "
                         "the matrix or the .txt path")
    if isinstance(value, np.ndarray):
        return value
    return read_axis_alignment(value)


def _from_prepared(scene: PreparedScene, superpoint: np.ndarray | None, source: str) -> Scene3D:
    """A prepared scene as it is (already centred); superpoints computed on its coordinates when missing."""
    sp, sp_source = (superpoint, "input") if superpoint is not None else (scene.superpoint, "input")
    if sp is None:
        sp, sp_source = compute_superpoints(scene.coord, np.zeros((0, 3), np.int64))
    else:
        sp = np.unique(sp, return_inverse=True)[1].reshape(-1).astype(np.int64)
    centre = np.asarray(scene.meta.get("centre", (0.0, 0.0, 0.0)), dtype=np.float64)
    return Scene3D(scene.scene_id, np.asarray(scene.coord, np.float32), np.asarray(scene.color, np.uint8), sp,
                   centre, np.eye(4), sp_source, source)
