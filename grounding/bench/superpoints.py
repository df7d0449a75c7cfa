"""``grounding bench superpoints``: seconds per scan of the superpoint segmentation, on one core.

The mesh is a generated scan of the synthetic ``scannet`` preset (ScanNet-sized ``*_vh_clean_2.ply`` files in the
real format; the same cached scans as ``grounding bench prepare``): the smallest scan with at least 150k vertices,
the size the issue set its target for (under 2 s on one core). Two variants are timed on it:

- ``mesh``: :func:`pointcloud.superpoints.mesh_superpoints`, ScanNet's Segmentator rule over the mesh edges
  (normals, edge weights and the Felzenszwalb–Huttenlocher passes; reading the file is not included);
- ``cloud``: :func:`pointcloud.superpoints.point_cloud_superpoints` on the same vertices without faces (PCA normals
  over 10 neighbours by Open3D, a 6-nearest-neighbour graph by scipy, the same merging).

"One core" is enforced, not assumed: the process is pinned to one CPU (``sched_setaffinity``) for the timed runs,
and the thread pools that could start extra threads are set to one (OpenMP/BLAS through the environment when they
are not loaded yet, Open3D's ``set_max_threads``, torch's intra-op threads when torch is loaded). Each variant gets
one untimed warm-up run (imports, first-touch page faults), then the median of ``repeats`` runs is reported.
NumPy is imported inside the functions so that :func:`single_thread_env` can still take effect.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["bench_superpoints", "format_superpoints", "one_core", "pick_scan", "single_thread_env"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
TARGET_VERTICES = 150_000


def single_thread_env() -> None:
    """Ask OpenMP and BLAS for one thread; effective only for libraries that are not loaded yet."""
    for name in THREAD_ENV:
        os.environ[name] = "1"


@contextmanager
def one_core() -> Iterator[str]:
    """Pin this process to one CPU and its thread pools to one thread; restores both afterwards.

    Yields a short description of what was done, for the report.
    """
    done = []
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity:
        cpu = min(affinity)
        os.sched_setaffinity(0, {cpu})
        done.append(f"pinned to CPU {cpu}")
    import open3d as o3d  # the point-cloud variant's normals run on Open3D's thread pool

    o3d_threads = o3d.utility.get_max_threads()
    o3d.utility.set_max_threads(1)
    torch = sys.modules.get("torch")  # only when something already loaded it: the segmentation does not use torch
    torch_threads = torch.get_num_threads() if torch is not None else None
    if torch is not None:
        torch.set_num_threads(1)
    done.append("1 thread (OpenMP/BLAS env, Open3D max threads 1" + (", torch 1 thread)" if torch else ")"))
    try:
        yield ", ".join(done)
    finally:
        if affinity:
            os.sched_setaffinity(0, affinity)
        o3d.utility.set_max_threads(o3d_threads)
        if torch_threads is not None:
            torch.set_num_threads(torch_threads)


def pick_scan(scans: Path, min_vertices: int = TARGET_VERTICES) -> tuple[str, Any]:
    """(scan name, mesh) of the smallest scan with at least ``min_vertices`` vertices, else of the largest."""
    from datasets.scannet.prepare import fast_read_mesh

    meshes = {p.name: fast_read_mesh(p / f"{p.name}_vh_clean_2.ply") for p in sorted(scans.iterdir()) if p.is_dir()}
    if not meshes:
        raise FileNotFoundError(f"no scans under {scans}")
    big = [name for name, m in meshes.items() if len(m.xyz) >= min_vertices]
    if big:
        name = min(big, key=lambda n: (len(meshes[n].xyz), n))
    else:
        name = max(meshes, key=lambda n: (len(meshes[n].xyz), n))
    return name, meshes[name]


def _median_run(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    out = fn()  # warm-up, untimed
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return runs, out


def bench_superpoints(work_dir: Path | None = None, preset: str = "scannet", seed: int = 0, repeats: int = 5,
                      min_vertices: int = TARGET_VERTICES) -> dict[str, Any]:
    """Time mesh and point-cloud superpoints on one generated scan (generated once, cached in ``work_dir``).

    Returns:
        the scan (``scene``, ``vertices``, ``faces``), ``threads`` (what :func:`one_core` did), and per variant
        (``mesh``, ``cloud``): ``{"runs": [s, ...], "median", "superpoints"}``.
    """
    import numpy as np

    from datasets.synthetic import generate_synthetic
    from pointcloud.superpoints import mesh_superpoints, point_cloud_superpoints

    work_dir = Path(work_dir or Path(tempfile.gettempdir()) / f"grounding_bench_{preset}_{seed}")
    scans = work_dir / "raw" / "scans"
    if not scans.is_dir():
        generate_synthetic(work_dir, preset=preset, seed=seed)
    scene, mesh = pick_scan(scans, min_vertices)
    result: dict[str, Any] = {"preset": preset, "scene": scene, "vertices": len(mesh.xyz), "faces": len(mesh.faces),
                              "repeats": repeats}
    variants = {
        "mesh": lambda: mesh_superpoints(mesh.xyz, mesh.faces),
        "cloud": lambda: point_cloud_superpoints(mesh.xyz),
    }
    with one_core() as threads:
        result["threads"] = threads
        for name, fn in variants.items():
            runs, sp = _median_run(fn, repeats)
            result[name] = {"runs": runs, "median": statistics.median(runs), "superpoints": int(np.max(sp)) + 1}
    return result


def format_superpoints(r: dict[str, Any]) -> str:
    """The report lines of :func:`bench_superpoints`'s result."""
    n = r["vertices"]
    lines = [f"scan {r['scene']} of the synthetic {r['preset']} preset: {n} vertices, {r['faces']} faces; "
             f"one core: {r['threads']}"]
    for name, what in (("mesh", "mesh superpoints (ScanNet Segmentator rule, mesh edges)"),
                       ("cloud", "point-cloud superpoints (same vertices, no faces: PCA normals k=10, kNN k=6)")):
        v = r[name]
        lines.append(f"{what}: median {v['median']:.3f} s of {r['repeats']} (runs {[round(s, 3) for s in v['runs']]}),"
                     f" {1e6 * v['median'] / n:.2f} µs/vertex, {v['superpoints']} superpoints")
    return "\n".join(lines)
