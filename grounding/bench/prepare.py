"""``grounding bench prepare``: seconds per scene of the ScanNet preparer on generated ScanNet-sized scans.

The scans come from the synthetic generator's ``scannet`` preset (150k+ vertices, written in the real
raw formats), so the preparer reads exactly what it reads for real ScanNet. One process, one scene at
a time: the number is per core.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from grounding.bench import peak_rss_mib


def bench_prepare(work_dir: Path | None = None, preset: str = "scannet", seed: int = 0,
                  repeats: int = 3) -> dict[str, float]:
    """Generate the preset once (cached in ``work_dir``), then time ``prepare_scene`` per scene.

    Returns:
        ``{"scenes", "median_points", "median_seconds", "max_seconds", "points_per_second", "peak_rss_mib"}``;
        each scene's time is its best of ``repeats`` runs (file cache warm, as in a bulk preparation).
    """
    from datasets.scannet.prepare import prepare_scene
    from datasets.synthetic import generate_synthetic

    work_dir = Path(work_dir or Path(tempfile.gettempdir()) / f"grounding_bench_{preset}_{seed}")
    scans = work_dir / "raw" / "scans"
    if not scans.is_dir():
        generate_synthetic(work_dir, preset=preset, seed=seed)
    times, points = [], []
    for scan in sorted(p for p in scans.iterdir() if p.is_dir()):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            scene = prepare_scene(scan)
            best = min(best, time.perf_counter() - start)
        times.append(best)
        points.append(scene.num_points)
    return {
        "scenes": len(times),
        "median_points": statistics.median(points),
        "median_seconds": statistics.median(times),
        "max_seconds": max(times),
        "points_per_second": sum(points) / sum(times),
        "peak_rss_mib": peak_rss_mib(),
    }


def format_prepare(r: dict[str, float]) -> str:
    """The report lines of :func:`bench_prepare`'s result."""
    return (f"scenes: {r['scenes']}, median points: {r['median_points']:.0f}\n"
            f"prepare: median {r['median_seconds']:.3f} s/scene, max {r['max_seconds']:.3f} s, "
            f"{r['points_per_second'] / 1e3:.0f}k points/s, peak RSS {r['peak_rss_mib']:.0f} MiB (one core)")
