"""Turn ScanNet v2 raw scans into prepared scene folders (data spec §1, §2).

One scan (``scans/<scene>/``, the four raw files of §1) becomes one :class:`PreparedScene`: every mesh
vertex in file order, ``coord`` centred on the per-scene vertex mean, mesh colours, compacted
``segIndices`` as superpoints, ScanNet-20 semantics and segGroup ids as instance labels.

Decisions where the spec leaves room (each is recorded in ``meta.json`` so it can be audited):

- Aggregation segments that name a segment id absent from ``segIndices`` are not fatal: they cannot
  label any vertex, so they are dropped, counted (``unknown_segments``) and logged; groups left with
  no vertex are listed in ``empty_group_ids`` (a ScanRefer object pointing at one has an empty mask).
- A segment listed in two groups goes to the group listed later (the original pipeline's order);
  such segments are counted (``overlapping_segments``) and logged.
- Two groups with the same ``id`` are fatal: they would silently merge two objects into one mask.
- The arrays are all vertices of the mesh; nothing is subsampled, nothing is axis-aligned.

The batch driver :func:`prepare_scannet` is idempotent (a scene is skipped when its ``meta.json``
has this preparer version and the same source sizes and mtimes), isolates failures per scene, and
swaps a finished scene folder into place only once it is complete.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from plyfile import PlyData
from tqdm import tqdm

from datasets.errors import DataFormatError
from datasets.scannet import raw
from datasets.scannet.labels import nyu40_to_scannet20
from datasets.scannet.raw import Mesh, SegGroup
from datasets.scannet.scene import PREPARER_VERSION, PreparedScene

log = logging.getLogger(__name__)

EXPECTED_SEGS_PARAMS = {"kThresh": 0.01, "segMinVerts": 20.0}  # spec §1.4, unconfirmed for every file
_TRIANGLES = {"face": {"vertex_indices": 3}}


# --------------------------------------------------------------------------------- fast PLY path
# raw.read_mesh / raw.read_labels parse the face list row by row in Python (about 3 s for 300k
# faces). ScanNet faces are all triangles, so plyfile can memory-map them as a fixed (F, 3) block.
# The fast path only ever *accepts* a file: on anything irregular it calls the reference reader,
# which either reads the file its own way or raises the error that names file, record and field.
def _mmap_ply(path: Path) -> PlyData | None:
    if not path.is_file():
        return None
    try:
        return PlyData.read(str(path), mmap="c", known_list_len=_TRIANGLES)
    except Exception:  # noqa: BLE001 - any parse problem is reported by the reference reader
        return None


def _vertex_columns(ply: PlyData, names: Iterable[str]) -> list[np.ndarray] | None:
    if "vertex" not in [e.name for e in ply.elements]:
        return None
    have = {p.name for p in ply["vertex"].properties}
    if not set(names) <= have:
        return None
    return [np.array(ply["vertex"][n]) for n in names]  # np.array copies out of the memory map


def fast_read_mesh(path: str | Path) -> Mesh:
    """:func:`raw.read_mesh` with memory-mapped triangle faces; identical result, same errors.

    Returns ``xyz`` (N, 3) float32 metres in the raw scan frame (+z up), ``rgb`` (N, 3) uint8 and
    ``faces`` (F, 3) int64 vertex indices.
    """
    path = Path(path)
    ply = _mmap_ply(path)
    cols = None if ply is None else _vertex_columns(ply, ("x", "y", "z", "red", "green", "blue"))
    if cols is None or any(c.dtype != np.uint8 for c in cols[3:]):
        return raw.read_mesh(path)
    xyz = np.stack(cols[:3], 1).astype(np.float32)
    faces = np.zeros((0, 3), dtype=np.int64)
    if "face" in [e.name for e in ply.elements] and ply["face"].count:
        if "vertex_indices" not in {p.name for p in ply["face"].properties}:
            return raw.read_mesh(path)
        faces = np.array(ply["face"]["vertex_indices"], dtype=np.int64)
    bad_faces = len(faces) and (faces.ndim != 2 or faces.shape[1] != 3 or faces.min() < 0
                                or faces.max() >= len(xyz))
    if bad_faces or not np.isfinite(xyz).all():
        return raw.read_mesh(path)  # raises the named error
    return Mesh(xyz=xyz, rgb=np.stack(cols[3:], 1), faces=faces)


def fast_read_labels(path: str | Path) -> np.ndarray:
    """:func:`raw.read_labels` with memory-mapped faces: NYU40 ``label`` per vertex, (N,) int64."""
    path = Path(path)
    ply = _mmap_ply(path)
    cols = None if ply is None else _vertex_columns(ply, ("label",))
    if cols is None or not np.issubdtype(cols[0].dtype, np.integer):
        return raw.read_labels(path)
    return cols[0].astype(np.int64)


# ----------------------------------------------------------------------------------- one scan
def source_stats(paths: dict[str, Path]) -> dict[str, dict[str, Any] | None]:
    """``role -> {"file", "size", "mtime_ns"}`` of each source file (None if missing): the idempotency key."""
    out: dict[str, dict[str, Any] | None] = {}
    for role, p in paths.items():
        try:
            st = p.stat()
        except OSError:
            out[role] = None
            continue
        out[role] = {"file": p.name, "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}
    return out


def _check_count(path: Path, n: int, n_mesh: int, mesh_path: Path, fld: str) -> None:
    if n != n_mesh:
        # the record is the first vertex index present in one file and absent from the other
        raise DataFormatError(path, f"{n} per-vertex entries, but {mesh_path.name} has {n_mesh} vertices "
                              "(expected one per mesh vertex, same order)", record=f"vertex {min(n, n_mesh)}",
                              field=fld)


def _segs_params(path: Path) -> dict[str, Any]:
    params = json.loads(path.read_text()).get("params", {})  # read_segs has validated the JSON already
    params = params if isinstance(params, dict) else {}
    for key, expected in EXPECTED_SEGS_PARAMS.items():
        try:
            ok = float(params[key]) == expected
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            log.warning("%s: segs param %s = %r, expected %g", path, key, params.get(key), expected)
    return params


def assign_instances(uniq: np.ndarray, groups: list[SegGroup], path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Instance id per superpoint: ``(K,) int64`` segGroup ``id`` (never renumbered), -1 if in no group.

    ``uniq`` (K,) are the sorted raw segment ids (superpoint k is segment ``uniq[k]``). Returns the
    array and counts for ``meta.json``: ``unknown_segments``, ``overlapping_segments``, ``empty_group_ids``.
    """
    k = len(uniq)
    sp_inst = np.full(k, -1, dtype=np.int64)
    first_at: dict[int, int] = {}
    for j, g in enumerate(groups):  # loop over groups (tens), never over vertices
        if g.id in first_at:
            raise DataFormatError(path, f"id {g.id} is already used by segGroups[{first_at[g.id]}] "
                                  "(two objects would share one mask)", record=f"segGroups[{j}]", field="id")
        first_at[g.id] = j
    lens = [len(g.segments) for g in groups]
    seg = np.asarray([s for g in groups for s in g.segments], dtype=np.int64)
    order = np.repeat(np.arange(len(groups)), lens)
    pos = np.minimum(np.searchsorted(uniq, seg), max(k - 1, 0))
    known = (uniq[pos] == seg) if k else np.zeros(len(seg), dtype=bool)
    unknown = np.unique(seg[~known])
    pos, order = pos[known], order[known]
    gid = np.asarray([g.id for g in groups], dtype=np.int64)[order] if len(order) else order

    # a superpoint claimed by two distinct groups: count it, the later group wins below
    pairs = np.unique(np.stack([pos, order]), axis=1)
    claims = np.bincount(pairs[0], minlength=k) if pairs.size else np.zeros(k, dtype=np.int64)
    overlapping = np.flatnonzero(claims > 1)
    # explicit "last occurrence wins": NumPy does not promise an order for repeated fancy-index writes
    _, first_rev = np.unique(pos[::-1], return_index=True)
    last = len(pos) - 1 - first_rev
    sp_inst[pos[last]] = gid[last]

    used = set(np.unique(order).tolist())
    empty = [g.id for j, g in enumerate(groups) if j not in used]
    if len(unknown):
        log.warning("%s: %d segment id(s) not present in segIndices are ignored: %s", path, len(unknown),
                    unknown[:10].tolist())
    if len(overlapping):
        log.warning("%s: %d segment(s) belong to more than one group; the later group wins: %s", path,
                    len(overlapping), uniq[overlapping[:10]].tolist())
    stats = {"unknown_segments": int(len(unknown)), "overlapping_segments": int(len(overlapping)),
             "empty_group_ids": empty}
    return sp_inst, stats


def prepare_scene(scan_dir: str | Path, scene_id: str | None = None) -> PreparedScene:
    """Read the four raw files of one scan and build the per-vertex arrays of data spec §2.

    Args:
        scan_dir: ``scans/<scene>/`` holding ``<scene>_vh_clean_2.ply``, ``.labels.ply``,
            ``_vh_clean_2.0.010000.segs.json`` and ``<scene>.aggregation.json``.
        scene_id: file-name prefix; defaults to the folder name.

    Returns:
        A scene with N = mesh vertex count: ``coord`` (N, 3) float32 metres, raw frame minus its
        vertex mean (z-up, no axis alignment); ``color`` (N, 3) uint8 from the mesh; ``superpoint``
        (N,) int64 in 0..K-1; ``semantic`` (N,) int64 ScanNet-20 or -100; ``instance`` (N,) int64
        segGroup id or -1. ``meta`` holds sources (size, mtime), segs params and label statistics.

    Raises:
        DataFormatError: a file is missing or malformed, vertex counts differ, group ids collide or
            disagree with ``objectId``. The message names the file, the record and the field.
    """
    scan_dir = Path(scan_dir)
    scene_id = scene_id or scan_dir.name
    paths = raw.scan_files(scan_dir, scene_id)
    stats = source_stats(paths)  # taken before reading: a file changed meanwhile re-prepares next run
    mesh = fast_read_mesh(paths["mesh"])
    n = len(mesh.xyz)
    if n == 0:
        raise DataFormatError(paths["mesh"], "the mesh has no vertices", record="element 'vertex'", field="count")
    nyu40 = fast_read_labels(paths["labels"])
    _check_count(paths["labels"], len(nyu40), n, paths["mesh"], "label")
    seg = raw.read_segs(paths["segs"])
    _check_count(paths["segs"], len(seg), n, paths["mesh"], "segIndices")
    params = _segs_params(paths["segs"])
    groups = raw.read_aggregation(paths["aggregation"])

    centre = mesh.xyz.mean(axis=0, dtype=np.float64)  # float64 mean: float32 sums drift on 1e5 points
    coord = (mesh.xyz - centre).astype(np.float32)
    uniq, superpoint = np.unique(seg, return_inverse=True)
    sp_inst, inst_stats = assign_instances(uniq, groups, paths["aggregation"])
    instance = sp_inst[superpoint]
    ids = np.unique(instance)
    meta = {
        "preparer_version": PREPARER_VERSION, "layout": "scannet_raw", "source": stats,
        "centre": [float(c) for c in centre], "num_faces": int(len(mesh.faces)), "segs_params": params,
        "num_groups": len(groups), "num_instances": int((ids >= 0).sum()),
        "num_annotated_points": int((instance >= 0).sum()),
        "instance_labels": {str(g.id): g.label for g in groups}, **inst_stats,
    }
    return PreparedScene(scene_id=scene_id, coord=coord, color=mesh.rgb, superpoint=superpoint.astype(np.int64),
                         semantic=nyu40_to_scannet20(nyu40), instance=instance, meta=meta)


# ---------------------------------------------------------------------------------- many scans
@dataclass
class PrepareReport:
    """Outcome of a batch: scene ids prepared and skipped (up to date), failures ``scene -> message``."""

    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        """One line of counts, then one line per failed scene with its error message."""
        lines = [f"prepared {len(self.prepared)}, skipped {len(self.skipped)} (up to date), "
                 f"failed {len(self.failed)} in {self.seconds:.1f} s"]
        lines += [f"  FAILED {sid}: {msg}" for sid, msg in sorted(self.failed.items())]
        return "\n".join(lines)


def is_up_to_date(folder: Path, source: dict[str, Any]) -> bool:
    """True when ``folder/meta.json`` exists with this preparer version and exactly these source stats."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (meta.get("preparer_version") == PREPARER_VERSION and meta.get("source") == source
            and all(v is not None for v in source.values()))


def save_atomic(scene: PreparedScene, out_dir: Path) -> Path:
    """Save into a hidden staging folder in ``out_dir``, then swap it in place of ``out_dir/<scene_id>``.

    A crash leaves either the previous folder or the new complete one, never a folder with a
    ``meta.json`` and missing arrays, and no stale array of a previous save survives.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{scene.scene_id}.partial-", dir=out_dir))
    try:
        staged = scene.save(stage)
        final = out_dir / scene.scene_id
        old = stage / "previous"
        if final.exists():
            os.replace(final, old)
        try:
            os.replace(staged, final)
        except OSError:
            if old.exists():
                os.replace(old, final)
            raise
        return final
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _job(build: Callable[[Path, str], PreparedScene], src: Path, out_dir: Path, scene_id: str) -> str | None:
    """Worker body (top level so a process pool can pickle it): None on success, else the message."""
    try:
        save_atomic(build(src, scene_id), out_dir)
        return None
    except DataFormatError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - one bad scene must not stop the batch; the type is kept
        return f"{type(e).__name__}: {e}"


def run_jobs(build: Callable[[Path, str], PreparedScene], stats: Callable[[Path, str], dict[str, Any]],
             sources: dict[str, Path], out_dir: Path, report: PrepareReport, workers: int = 1,
             force: bool = False, progress: bool = True) -> PrepareReport:
    """Prepare ``sources`` (scene id -> source folder) into ``out_dir``, skipping up-to-date scenes.

    ``build(src, scene_id)`` makes the scene and ``stats(src, scene_id)`` gives the idempotency key
    that ``build`` stores as ``meta["source"]``. Both must be module-level functions when ``workers > 1``.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    todo = []
    for sid, src in sources.items():
        if not force and is_up_to_date(out_dir / sid, stats(src, sid)):
            report.skipped.append(sid)
        else:
            todo.append(sid)
            for stale in out_dir.glob(f".{sid}.partial-*"):  # left by a killed run of this scene only
                shutil.rmtree(stale, ignore_errors=True)
    bar = tqdm(total=len(sources), initial=len(report.skipped), disable=not progress, unit="scene",
               desc=f"prepare -> {out_dir.name}")

    def record(sid: str, message: str | None) -> None:
        if message is None:
            report.prepared.append(sid)
        else:
            report.failed[sid] = message
            log.error("%s failed: %s", sid, message)
        bar.update(1)

    if workers <= 1 or len(todo) <= 1:
        for sid in todo:
            record(sid, _job(build, sources[sid], out_dir, sid))
    else:
        # spawn, not fork: the caller may hold threads (tqdm's monitor, torch's pools) that fork would copy
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=spawn) as pool:
            futures = {pool.submit(_job, build, sources[sid], out_dir, sid): sid for sid in todo}
            for fut in as_completed(futures):
                try:
                    message = fut.result()
                except Exception as e:  # noqa: BLE001 - e.g. a worker killed by the OOM killer
                    message = f"{type(e).__name__}: {e}"
                record(futures[fut], message)
    bar.close()
    report.prepared.sort()
    report.skipped.sort()
    report.seconds += time.perf_counter() - start
    return report


def read_split_file(path: str | Path) -> list[str]:
    """Scene ids of a split list such as ``scannetv2_val.txt``: one per line, blanks and ``#`` skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "split file is missing (expected one scene id per line)")
    return [s.strip() for s in path.read_text().splitlines() if s.strip() and not s.lstrip().startswith("#")]


def _scans_root(raw_dir: str | Path) -> Path:
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise DataFormatError(raw_dir, "raw ScanNet folder is missing")
    return raw_dir / "scans" if (raw_dir / "scans").is_dir() else raw_dir


def discover_scans(raw_dir: str | Path) -> dict[str, Path]:
    """``scene id -> folder`` of every scan under ``raw_dir/scans/`` (if present) or directly ``raw_dir/``.

    A folder counts as a scan when it holds at least one of its four raw files, so a scan missing
    some files is found and reported instead of silently ignored.
    """
    root = _scans_root(raw_dir)
    return {d.name: d for d in sorted(root.iterdir())
            if d.is_dir() and any(p.is_file() for p in raw.scan_files(d).values())}


def _scan_stats(src: Path, scene_id: str) -> dict[str, Any]:
    return source_stats(raw.scan_files(src, scene_id))


def _build_scan(src: Path, scene_id: str) -> PreparedScene:
    return prepare_scene(src, scene_id)


def select_sources(found: dict[str, Path], wanted: list[str] | None, root: Path,
                   report: PrepareReport) -> dict[str, Path]:
    """Restrict ``found`` to ``wanted`` (order kept); wanted ids without a folder go to ``report.failed``."""
    if wanted is None:
        return found
    for sid in wanted:
        if sid not in found:
            report.failed[sid] = str(DataFormatError(root / sid, "scan folder is missing (the scene was requested "
                                                     "by the split file or scene ids)"))
    return {sid: found[sid] for sid in dict.fromkeys(wanted) if sid in found}


def prepare_scannet(raw_dir: str | Path, out_dir: str | Path, split_file: str | Path | None = None,
                    scene_ids: Iterable[str] | None = None, workers: int = 1, force: bool = False,
                    progress: bool = True) -> PrepareReport:
    """Prepare every scan of ``raw_dir`` into ``out_dir/<scene_id>/`` (see :mod:`datasets.scannet.scene`).

    Args:
        raw_dir: holds ``scans/<scene>/`` or directly ``<scene>/`` folders of raw files.
        out_dir: destination; only the folders of the scenes being prepared are written.
        split_file: optional list of scene ids (``scannetv2_val.txt``) restricting the set.
        scene_ids: optional further restriction (intersected with ``split_file`` when both are given).
        workers: processes; > 1 uses a process pool.
        force: re-prepare scenes that are up to date.
        progress: show a tqdm bar.

    Returns:
        The report; a requested scene without a folder, or whose preparation raised, is in ``failed``.
    """
    report = PrepareReport()
    found = discover_scans(raw_dir)
    wanted = read_split_file(split_file) if split_file is not None else None
    if scene_ids is not None:
        ids = list(scene_ids)
        wanted = ids if wanted is None else [s for s in wanted if s in set(ids)]
    sources = select_sources(found, wanted, _scans_root(raw_dir), report)
    return run_jobs(_build_scan, _scan_stats, sources, Path(out_dir), report, workers=workers, force=force,
                    progress=progress)
