"""A prepared scene: one folder of per-vertex arrays (data spec §2), the common input of every 3D task.

Folder layout (``<out>/<scene_id>/``)::

    coord.npy       (N, 3) float32  metres, vertex xyz minus the per-scene mean (no axis alignment)
    color.npy       (N, 3) uint8    vertex RGB as stored in the mesh (the model maps it to [-1, 1])
    superpoint.npy  (N,)   int64    mesh segment id compacted to 0..K-1
    semantic.npy    (N,)   int64    ScanNet-20 class id 0..19, -100 = ignore
    instance.npy    (N,)   int64    aggregation segGroup id (= ScanRefer object_id), -1 = unannotated
    meta.json       {"scene_id", "preparer_version", "num_points", "num_superpoints", "source", ...}

Colours are stored as uint8 (4x smaller than float32) and converted by the transforms, which is
where the original pipeline's ``rgb / 127.5 - 1`` belongs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import DataFormatError

PREPARER_VERSION = 1
ARRAYS = {"coord": (np.float32, 2), "color": (np.uint8, 2), "superpoint": (np.int64, 1),
          "semantic": (np.int64, 1), "instance": (np.int64, 1)}


@dataclass
class PreparedScene:
    """Per-vertex arrays of one scene (shapes and frames in the module docstring)."""

    scene_id: str
    coord: np.ndarray
    color: np.ndarray
    superpoint: np.ndarray | None
    semantic: np.ndarray
    instance: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return len(self.coord)

    def save(self, out_dir: str | Path) -> Path:
        """Write the folder; arrays first, ``meta.json`` last (its presence marks a complete scene)."""
        folder = Path(out_dir) / self.scene_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "meta.json").unlink(missing_ok=True)
        for name, (dtype, _) in ARRAYS.items():
            arr = getattr(self, name)
            if arr is None:
                (folder / f"{name}.npy").unlink(missing_ok=True)  # never leave another scene's array behind
                continue
            tmp = folder / f".{name}.tmp.npy"
            np.save(tmp, np.ascontiguousarray(arr, dtype=dtype))
            os.replace(tmp, folder / f"{name}.npy")
        # Derived fields last: a scene loaded from an older preparer is re-saved with the current version.
        meta = {**self.meta, "scene_id": self.scene_id, "preparer_version": PREPARER_VERSION,
                "num_points": self.num_points,
                "num_superpoints": None if self.superpoint is None else int(self.superpoint.max(initial=-1) + 1)}
        tmp = folder / ".meta.json.tmp"
        tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(tmp, folder / "meta.json")
        return folder

    @classmethod
    def load(cls, folder: str | Path, require_superpoints: bool = True) -> PreparedScene:
        """Load a prepared scene folder, checking every array's dtype and length against ``coord``.

        Raises:
            DataFormatError: naming the file (and the first bad point) for a missing, truncated or
                non-object ``meta.json``; a missing or unreadable (e.g. truncated) ``.npy``; a wrong dtype,
                ndim or width (coord / color must be (N, 3)); a row count other than coord's; a scene
                with no points; a NaN / infinite coordinate; a superpoint id < 0 or an instance id < -1.
        """
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.is_file():
            raise DataFormatError(folder, "not a prepared scene (meta.json missing: preparation did not finish)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataFormatError(meta_path, f"not valid JSON ({e})") from e
        if not isinstance(meta, dict):
            raise DataFormatError(meta_path, f"expected a JSON object, got {type(meta).__name__}")
        arrays: dict[str, np.ndarray | None] = {}
        for name, (dtype, ndim) in ARRAYS.items():
            path = folder / f"{name}.npy"
            if not path.is_file():
                if name == "superpoint" and not require_superpoints:
                    arrays[name] = None
                    continue
                hint = (" (this scene has no superpoints: prepare it from the ScanNet raw files, which carry "
                        "segs.json, or compute superpoints for it)" if name == "superpoint" else "")
                raise DataFormatError(path, "file is missing" + hint)
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError) as e:
                raise DataFormatError(path, f"not a readable .npy file ({e})") from e
            if arr.ndim != ndim or arr.dtype != dtype:
                raise DataFormatError(path, f"expected {ndim}-d {np.dtype(dtype).name}, got {arr.ndim}-d {arr.dtype}")
            if ndim == 2 and arr.shape[1] != 3:  # xyz / rgb: any other width is a different array
                raise DataFormatError(path, f"expected shape (N, 3), got {arr.shape}")
            arrays[name] = arr
        n = len(arrays["coord"])
        if n == 0:  # nothing downstream (voxelisation, superpoint pooling) is defined on an empty scene
            raise DataFormatError(folder / "coord.npy", "the scene has no points")
        for name, arr in arrays.items():
            if arr is not None and len(arr) != n:
                raise DataFormatError(folder / f"{name}.npy", f"{len(arr)} rows, but coord.npy has {n}")
        _check_values(folder, arrays)
        return cls(scene_id=meta.get("scene_id", folder.name), meta=meta, **arrays)


def instance_classes(scene: PreparedScene, raw2label: Mapping[str, int], path: Path | str = "",
                     default: int = -100) -> dict[int, int]:
    """Class of every instance id of a prepared scene, from the raw category in ``meta.json`` ``instance_labels``.

    Args:
        raw2label: raw category -> class id (e.g. ScanRefer-18, or NYU40 - 1); categories it lacks get ``default``.
        path: the scene folder, for the error message (default: the scene id).

    Raises:
        DataFormatError: ``meta.json`` has no ``instance_labels`` (scenes prepared from the Pointcept layout).
    """
    labels = scene.meta.get("instance_labels")
    if not isinstance(labels, dict):
        raise DataFormatError(Path(path or scene.scene_id) / "meta.json",
                              "field 'instance_labels' is missing: re-run `grounding prepare` on this scene",
                              field="instance_labels")
    return {int(k): raw2label.get(str(v), default) for k, v in labels.items()}


def _check_values(folder: Path, arrays: dict[str, np.ndarray | None]) -> None:
    """Reject values that load fine but would make a silently wrong sample or a crash deep in numpy.

    A NaN/inf coordinate poisons voxelisation and every superpoint centre; a negative superpoint id
    breaks ``np.bincount``; an instance id below -1 would be read as an object no record can name.
    """
    coord = arrays["coord"]
    finite = np.isfinite(coord).all(1)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise DataFormatError(folder / "coord.npy", f"non-finite coordinate {coord[bad].tolist()} "
                              f"({int((~finite).sum())} points)", record=f"point {bad}", field="coord")
    for name, low in (("superpoint", 0), ("instance", -1)):
        arr = arrays[name]
        if arr is not None and arr.min() < low:
            bad = int(np.flatnonzero(arr < low)[0])
            raise DataFormatError(folder / f"{name}.npy", f"id {int(arr[bad])} is below {low}",
                                  record=f"point {bad}", field=name)
