"""``grounding bench rgsan``: RG-SAN forward latency and peak memory on a ScanNet-sized scene.

The scene is the largest of the synthetic generator's ``scannet`` preset (ScanNet-sized scans in the real raw
formats, prepared by the real preparer), with 64 of its ScanRefer-format descriptions (cycled when the scene has
fewer), evaluated as RG-SAN evaluates: one scene, up to 64 descriptions, the validation transform. The model is
built from ``configs/model/rgsan.yaml`` (published widths and depths) with the configured text encoder.

Reported per device: median forward latency of the whole batch (= per scene) and divided by the descriptions,
the split into backbone / text / decoder, and peak memory (CUDA: ``max_memory_allocated``; CPU: growth of the
process's peak RSS during the forward passes, which includes allocator caching).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from grounding.bench import peak_rss_mib


def bench_scene(work_dir: Path | None = None, seed: int = 0, descriptions: int = 64) -> tuple[Path, str, list]:
    """Generate (once, cached) and prepare the ``scannet`` preset; return (scenes dir, largest scene, records)."""
    from datasets.scannet.prepare import prepare_scannet
    from datasets.scanrefer import load_scanrefer
    from datasets.synthetic import generate_synthetic

    work_dir = Path(work_dir or Path(tempfile.gettempdir()) / f"grounding_bench_scannet_{seed}")
    if not (work_dir / "ScanRefer_filtered_val.json").is_file():
        generate_synthetic(work_dir, preset="scannet", seed=seed)
    scenes = work_dir / "scenes"
    prepare_scannet(work_dir / "raw", scenes)
    label_map = work_dir / "raw" / "scannetv2-labels.combined.tsv"
    records = [r for split in ("train", "val")
               for r in load_scanrefer(work_dir / f"ScanRefer_filtered_{split}.json", label_map=label_map)]
    sizes = {p.name: int(json.loads((p / "meta.json").read_text())["num_points"])
             for p in scenes.iterdir() if (p / "meta.json").is_file()}
    scene_id = max(sizes, key=lambda s: (sizes[s], s))
    mine = [r for r in records if r.scene_id == scene_id]
    if not mine:
        raise RuntimeError(f"scene {scene_id} has no descriptions")
    picked = [mine[k % len(mine)] for k in range(descriptions)]
    return scenes, scene_id, picked


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_rgsan(device: str = "cpu", repeats: int = 5, descriptions: int = 64, work_dir: Path | None = None,
                overrides: Sequence[str] = (), precision: str = "32") -> dict[str, Any]:
    """Time RG-SAN's forward pass (eval mode, no grad) on one ScanNet-sized scene with ``descriptions`` descriptions.

    Args:
        device: ``cpu`` or ``cuda``.
        repeats: timed runs after one warm-up run (which fills the parse and text caches, as in evaluation).
        overrides: hydra overrides of the model config (e.g. ``model.net.use_rpe=false``).
        precision: ``32`` or ``16-mixed`` (CUDA autocast fp16).

    Returns:
        a dict of numbers (seconds, MiB) and the setting.
    """
    from hydra.utils import instantiate

    from datasets.refer3d import Refer3DDataset
    from datasets.transforms import ValTransform
    from grounding.engine.config import load_config

    dev = torch.device(device)
    scenes, scene_id, records = bench_scene(work_dir, descriptions=descriptions)
    ds = Refer3DDataset(scenes, records, ValTransform(), max_descriptions=descriptions)
    batch = ds.collate([ds[0]]).to(dev)
    cfg = load_config("train", ["model=rgsan", *overrides])
    torch.manual_seed(0)
    model = instantiate(cfg.model.net).to(dev).eval()
    autocast = torch.autocast("cuda", dtype=torch.float16, enabled=precision == "16-mixed" and dev.type == "cuda")

    def forward() -> dict[str, float]:
        parts = {}
        with torch.no_grad(), autocast:
            _sync(dev)
            t0 = time.perf_counter()
            model.backbone(batch.voxel_feats, batch.voxel_coords, batch.spatial_shape, batch.num_scenes)
            _sync(dev)
            parts["backbone"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            model(batch)
            _sync(dev)
            parts["total"] = time.perf_counter() - t0
        return parts

    forward()  # warm-up: spconv kernel selection, parse and text caches
    rss0 = peak_rss_mib()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = [forward() for _ in range(repeats)]
    total = statistics.median(r["total"] for r in runs)
    backbone = statistics.median(r["backbone"] for r in runs)
    return {
        "device": str(dev), "precision": precision, "scene": scene_id, "points": int(batch.coord.shape[0]),
        "voxels": int(batch.voxel_feats.shape[0]), "superpoints": int(batch.sp_offsets[-1]),
        "descriptions": len(records), "text_encoder": str(cfg.text_encoder.get("name_or_path") or "all-MiniLM-L6-v2"),
        "seconds_per_scene": total, "seconds_per_description": total / len(records),
        "backbone_seconds": backbone, "rest_seconds": total - backbone,
        "peak_mib": (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
                     else peak_rss_mib()),
        "peak_growth_mib": None if dev.type == "cuda" else peak_rss_mib() - rss0,
        "repeats": repeats, "overrides": list(overrides),
    }


def format_rgsan(r: dict[str, Any]) -> str:
    """The report lines of :func:`bench_rgsan`'s result."""
    growth = "" if r["peak_growth_mib"] is None else f" (+{r['peak_growth_mib']:.0f} MiB during the forwards)"
    return "\n".join([
        f"scene {r['scene']}: {r['points']} points, {r['voxels']} voxels, {r['superpoints']} superpoints, "
        f"{r['descriptions']} descriptions; text encoder {r['text_encoder']}; {r['device']} {r['precision']}",
        f"forward (median of {r['repeats']}): {r['seconds_per_scene']:.3f} s/scene, "
        f"{1e3 * r['seconds_per_description']:.1f} ms/description "
        f"(backbone {r['backbone_seconds']:.3f} s, text + decoder {r['rest_seconds']:.3f} s)",
        f"peak memory: {r['peak_mib']:.0f} MiB{growth}",
    ])
