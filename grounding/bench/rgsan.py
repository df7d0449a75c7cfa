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
    """Generate (once, cached) and prepare the ``scannet`` preset; return (scenes dir, largest scene, records).

    ``records``: ``descriptions`` descriptions of the largest scene (its own, cycled).
    """
    scenes, records = bench_data(work_dir, seed)
    sizes = {p.name: int(json.loads((p / "meta.json").read_text())["num_points"])
             for p in scenes.iterdir() if (p / "meta.json").is_file()}
    scene_id = max(sizes, key=lambda s: (sizes[s], s))
    mine = [r for r in records if r.scene_id == scene_id]
    if not mine:
        raise RuntimeError(f"scene {scene_id} has no descriptions")
    picked = [mine[k % len(mine)] for k in range(descriptions)]
    return scenes, scene_id, picked


def bench_data(work_dir: Path | None = None, seed: int = 0) -> tuple[Path, list]:
    """The prepared ``scannet`` preset (generated once, cached in ``work_dir``): (scenes dir, every record)."""
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
    return scenes, records


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _build_rgsan(overrides: Sequence[str], device: torch.device) -> tuple[Any, torch.nn.Module]:
    """(config, model on ``device``) from ``configs/model/rgsan.yaml`` with ``overrides``, seeded."""
    from hydra.utils import instantiate

    from grounding.engine.config import load_config

    cfg = load_config("train", ["model=rgsan", *overrides])
    torch.manual_seed(0)
    return cfg, instantiate(cfg.model.net).to(device)


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
    from datasets.refer3d import Refer3DDataset
    from datasets.transforms import ValTransform

    if precision not in ("32", "16-mixed"):
        raise ValueError(f"the forward benchmark takes precision 32 or 16-mixed, got {precision!r}")
    dev = torch.device(device)
    scenes, scene_id, records = bench_scene(work_dir, descriptions=descriptions)
    ds = Refer3DDataset(scenes, records, ValTransform(), max_descriptions=descriptions)
    batch = ds.collate([ds[0]]).to(dev)
    cfg, model = _build_rgsan(overrides, dev)
    model.eval()
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


def bench_rgsan_train(device: str = "cpu", repeats: int = 5, items: int = 8, descriptions: int = 16,
                      work_dir: Path | None = None, overrides: Sequence[str] = (), precision: str = "32",
                      ) -> dict[str, Any]:
    """Time one RG-SAN training step (forward, weighted loss, backward, AdamW step) on ``items`` scenes.

    The batch holds ``items`` items of the ``scannet`` preset (distinct scenes first, each with up to
    ``descriptions`` descriptions, validation transform so every step sees the same input), the model and loss
    weights come from ``configs/model/rgsan.yaml``. ``precision``: ``32``, ``16-mixed`` (fp16 autocast with a
    GradScaler, as the trainer's CUDA default) or ``bf16-mixed``. One untimed warm-up step first.
    Peak memory on CUDA is ``max_memory_allocated`` over the timed steps.
    """
    from hydra.utils import instantiate

    from datasets.refer3d import Refer3DDataset
    from datasets.transforms import ValTransform
    from grounding.engine.task import weighted_loss

    if precision not in ("32", "16-mixed", "bf16-mixed"):
        raise ValueError(f"precision must be 32, 16-mixed or bf16-mixed, got {precision!r}")
    dev = torch.device(device)
    scenes, records = bench_data(work_dir)
    ds = Refer3DDataset(scenes, records, ValTransform(), max_descriptions=descriptions)
    picked = _distinct_scenes_first([scene for scene, _ in ds.items], items)
    batch = ds.collate([ds[i] for i in picked]).to(dev)
    cfg, model = _build_rgsan(overrides, dev)
    model.train()
    criterion = instantiate(cfg.model.criterion)
    weights = dict(cfg.model.get("loss_weights") or {})
    optimizer = torch.optim.AdamW([dict(g, lr=1e-4 * g.get("lr_scale", 1.0)) for g in model.param_groups()])
    low = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "16-mixed")

    def step() -> float:
        _sync(dev)
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=low or torch.float32, enabled=low is not None):
            terms = criterion(model(batch), batch)
            loss = weighted_loss(terms, weights)  # as the trainer weighs them
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        _sync(dev)
        return time.perf_counter() - t0

    step()  # warm-up: spconv kernel selection, parse and text caches, optimizer state
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    runs = [step() for _ in range(repeats)]
    return {
        "device": str(dev), "precision": precision, "items": len(picked),
        "scenes": len({ds.items[i][0] for i in picked}), "descriptions": int(sum(len(ds.items[i][1]) for i in picked)),
        "points": int(batch.coord.shape[0]), "voxels": int(batch.voxel_feats.shape[0]),
        "seconds_per_step": statistics.median(runs), "runs": runs, "repeats": repeats,
        "peak_mib": torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else peak_rss_mib(),
    }


def _distinct_scenes_first(scene_ids: Sequence[str], n: int) -> list[int]:
    """``n`` item indices: the first item of each scene in order, then the remaining items, cycled if needed."""
    if not scene_ids:
        raise RuntimeError("the benchmark set has no items")
    seen: set[str] = set()
    first, rest = [], []
    for i, s in enumerate(scene_ids):
        (rest if s in seen else first).append(i)
        seen.add(s)
    order = first + rest
    return [order[k % len(order)] for k in range(n)]


def format_rgsan_train(r: dict[str, Any]) -> str:
    """The report lines of :func:`bench_rgsan_train`'s result."""
    return "\n".join([
        f"batch: {r['items']} items from {r['scenes']} scenes, {r['descriptions']} descriptions, {r['points']} points, "
        f"{r['voxels']} voxels; {r['device']} {r['precision']}",
        f"train step (forward + loss + backward + AdamW; median of {r['repeats']}): {r['seconds_per_step']:.3f} s; "
        f"runs {[round(v, 3) for v in r['runs']]}",
        f"peak memory: {r['peak_mib']:.0f} MiB",
    ])
