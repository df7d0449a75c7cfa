"""Read ScanNet scenes stored in Pointcept's per-point ``.npy`` layout and save them as prepared scenes.

Pointcept (``Pointcept/Pointcept``, ``pointcept/datasets/preprocessing/scannet``) keeps one folder per
scene, one row per ``_vh_clean_2.ply`` vertex in vertex order::

    coord.npy      (N, 3) float32  raw mesh xyz, metres, z-up, NOT centred, not axis-aligned
    color.npy      (N, 3) uint8    mesh RGB
    normal.npy     (N, 3) float32  vertex normals (checked for length, not kept)
    instance.npy   (N,)   int64    aggregation segGroup id (= ScanRefer object_id), -1 unannotated
    segment20.npy  (N,)   int64    ScanNet-20 id 0..19, -1 ignore
    segment200.npy (N,)   int64    ScanNet-200 id (not used here)

These folders carry no mesh segmentation, so the prepared scene has ``superpoint = None``; loading it
with ``PreparedScene.load(require_superpoints=True)`` fails with a message that says so. Everything
else follows data spec §2: ``coord`` is centred on the per-scene mean exactly as for raw scans, and
instance ids are kept as they are (never renumbered).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from datasets.errors import DataFormatError
from datasets.scannet.labels import IGNORE_LABEL
from datasets.scannet.prepare import PrepareReport, run_jobs, select_sources, source_stats
from datasets.scannet.scene import PREPARER_VERSION, PreparedScene

REQUIRED = ("coord", "color", "instance", "segment20")
OPTIONAL = ("normal",)


def pointcept_files(folder: str | Path) -> dict[str, Path]:
    """Paths of the arrays this reader uses (required ones and ``normal.npy``), keyed by array name."""
    folder = Path(folder)
    return {name: folder / f"{name}.npy" for name in REQUIRED + OPTIONAL}


def _load(path: Path, ndim: int, kind: str, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DataFormatError(path, "file is missing (expected Pointcept's per-point .npy layout)")
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:
        raise DataFormatError(path, f"not a readable .npy file ({e})") from e
    shape = "(N, 3)" if ndim == 2 else "(N,)"
    if arr.ndim != ndim or (ndim == 2 and arr.shape[1] != 3) or arr.dtype.kind not in kind:
        raise DataFormatError(path, f"expected a {shape} array of kind {kind!r}, got shape {arr.shape} {arr.dtype}",
                              record="array", field=path.stem)
    return arr


def _first_bad(path: Path, bad: np.ndarray, values: np.ndarray, expected: str) -> None:
    """Raise naming the first point whose value is out of range (``bad`` is a boolean mask)."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataFormatError(path, f"value {values[i].tolist()} out of range (expected {expected}); "
                              f"{int(bad.sum())} point(s) affected", record=f"point {i}", field=path.stem)


def read_pointcept_scene(folder: str | Path, scene_id: str | None = None) -> PreparedScene:
    """Read one Pointcept scene folder as a :class:`PreparedScene` (data spec §2).

    Returns ``coord`` (N, 3) float32 metres, raw xyz minus its float64 mean (z-up, no axis
    alignment; the mean is ``meta["centre"]``); ``color`` (N, 3) uint8; ``superpoint`` None;
    ``semantic`` (N,) int64 ScanNet-20 with -1 mapped to -100; ``instance`` (N,) int64 as stored.

    Raises:
        DataFormatError: a file is missing, unreadable, of the wrong shape or kind, of another
            length than ``coord.npy``, or holds out-of-range values (the first bad point is named).
    """
    folder = Path(folder)
    scene_id = scene_id or folder.name
    files = pointcept_files(folder)
    stats = source_stats(files)
    xyz = _load(files["coord"], 2, "f")
    color = _load(files["color"], 2, "iu")
    instance = _load(files["instance"], 1, "iu")
    seg20 = _load(files["segment20"], 1, "iu")
    n = len(xyz)
    arrays = {"color": color, "instance": instance, "segment20": seg20}
    if files["normal"].is_file():  # memory-mapped: only its length is checked, the values are not kept
        arrays["normal"] = _load(files["normal"], 2, "f", mmap=True)
    for name, arr in arrays.items():
        if len(arr) != n:
            raise DataFormatError(files[name], f"{len(arr)} rows, but coord.npy has {n} (expected one per point)",
                                  record=f"point {min(len(arr), n)}", field=name)
    if n == 0:
        raise DataFormatError(files["coord"], "the scene has no points", record="array", field="coord")
    _first_bad(files["coord"], ~np.isfinite(xyz).all(1), xyz, "finite xyz")
    _first_bad(files["color"], ((color < 0) | (color > 255)).any(1), color, "0..255")
    _first_bad(files["instance"], instance < -1, instance, "-1 or an object id >= 0")
    _first_bad(files["segment20"], (seg20 < -1) | (seg20 > 19), seg20, "-1 or 0..19")

    centre = xyz.mean(axis=0, dtype=np.float64)
    semantic = seg20.astype(np.int64)
    semantic[semantic == -1] = IGNORE_LABEL
    instance = instance.astype(np.int64)
    ids = np.unique(instance)
    meta: dict[str, Any] = {
        "preparer_version": PREPARER_VERSION, "layout": "pointcept", "source": stats,
        "centre": [float(c) for c in centre], "num_instances": int((ids >= 0).sum()),
        "num_annotated_points": int((instance >= 0).sum()),
    }
    return PreparedScene(scene_id=scene_id, coord=(xyz - centre).astype(np.float32), color=color.astype(np.uint8),
                         superpoint=None, semantic=semantic, instance=instance, meta=meta)


def discover_pointcept(src_root: str | Path) -> dict[str, Path]:
    """``scene id -> folder`` of every folder holding ``coord.npy`` directly in ``src_root`` or one level
    below (Pointcept splits scenes into ``train/``, ``val/``, ``test/``).

    Raises:
        DataFormatError: ``src_root`` is missing, or one scene id appears in two split folders.
    """
    src_root = Path(src_root)
    if not src_root.is_dir():
        raise DataFormatError(src_root, "Pointcept ScanNet folder is missing")
    found: dict[str, Path] = {}
    for coord in sorted(list(src_root.glob("*/coord.npy")) + list(src_root.glob("*/*/coord.npy"))):
        folder = coord.parent
        if folder.name in found:
            raise DataFormatError(folder, f"scene id also found at {found[folder.name]}", field="scene id")
        found[folder.name] = folder
    return dict(sorted(found.items()))


def _pointcept_stats(src: Path, scene_id: str) -> dict[str, Any]:
    return source_stats(pointcept_files(src))


def _build_pointcept(src: Path, scene_id: str) -> PreparedScene:
    return read_pointcept_scene(src, scene_id)


def convert_pointcept(src_root: str | Path, out_root: str | Path, scene_ids: Iterable[str] | None = None,
                      workers: int = 1, force: bool = False, progress: bool = True) -> PrepareReport:
    """Save every Pointcept scene of ``src_root`` as a prepared scene folder ``out_root/<scene_id>/``.

    Same guarantees as :func:`datasets.scannet.prepare.prepare_scannet`: up-to-date scenes are skipped
    (same preparer version and source sizes+mtimes) unless ``force``; a failing scene is reported in
    ``failed`` and the others go on; a scene folder is swapped in only once complete.
    """
    report = PrepareReport()
    sources = select_sources(discover_pointcept(src_root), None if scene_ids is None else list(scene_ids),
                             Path(src_root), report)
    return run_jobs(_build_pointcept, _pointcept_stats, sources, Path(out_root), report, workers=workers,
                    force=force, progress=progress)
