"""``grounding bench backbone``: compressed vs uncompressed SAM ViT encoder, in one process on the same input.

One encoder is built (randomly initialised: no SAM weights can be fetched here; latency and FLOPs do not depend
on the weights, token selection does) and run alternately without and with the compression schedule
(A, B, A, B, ... after one warm-up each), so both see the same machine state. Reported: tokens per block, analytic
matmul FLOPs per block (:mod:`grounding.backbone.flops`, the compressor's own matmuls included), median latency
of each, the measured speed-up beside the ideal FLOP speed-up, and the cosine similarity of the two neck outputs
(label-free fidelity, spec §5.6; meaningful only with trained weights).
"""

from __future__ import annotations

import math
import statistics
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from grounding.backbone.compression import BackboneCompression
from grounding.backbone.flops import encoder_flops
from grounding.backbone.sam_vit import SAM_VIT_PRESETS, TextAwareViT

__all__ = ["bench_backbone", "bench_image", "format_backbone"]

SAM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
SAM_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def bench_image(size: int, data_root: str | Path = "data/synthetic2d", seed: int = 0) -> tuple[torch.Tensor, str]:
    """(1, 3, size, size) SAM-normalised input: the first generated picture when one exists, else noise."""
    from PIL import Image

    files = sorted(Path(data_root).glob("images/**/*.jpg"))
    if files:
        with Image.open(files[0]) as im:
            rgb = torch.from_numpy(__import__("numpy").asarray(im.convert("RGB")).copy()).permute(2, 0, 1).float()
        rgb = F.interpolate(rgb[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        return ((rgb - SAM_MEAN) / SAM_STD)[None], str(files[0])
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=g), "random noise (no generated pictures found)"


def build_encoder(model: str, image_size: int, seed: int = 0) -> TextAwareViT:
    """SAM's layout (window blocks + global blocks, no text), random weights with non-zero rel-pos tables."""
    torch.manual_seed(seed)
    img_size = 1024 if model != "tiny" else SAM_VIT_PRESETS["tiny"]["img_size"]
    vit = TextAwareViT.from_preset(model, img_size=img_size, global_all_blocks=False, text_gate=False).eval()
    with torch.no_grad():  # SAM zero-initialises the rel-pos tables; trained ones are not zero
        for name, p in vit.named_parameters():
            if "rel_pos" in name:
                p.normal_(0.0, 0.02)
    return vit


DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


def _timed(fn: Any, device: torch.device) -> tuple[float, torch.Tensor]:
    """Seconds of ``fn()``: CUDA events around it on an idle device (the spec's GPU protocol), else wall clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def p90(values: list[float]) -> float:
    """The 90th percentile by the nearest-rank rule (the largest value for fewer than 10 runs)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]


def bench_backbone(image_size: int = 1024, compress: str = "tome", ratio: float = 0.5, start_block: int = 2,
                   model: str = "vit_b", repeats: int = 3, mode: str = "gather", scope: str = "auto",
                   data_root: str | Path = "data/synthetic2d", device: str = "cpu", dtype: str = "float32",
                   warmup: int = 1) -> dict[str, Any]:
    """Interleaved timing and FLOP table of one compression setting; returns a dict for :func:`format_backbone`.

    ``device``: ``cpu`` or ``cuda`` (CUDA: timed with CUDA events). ``dtype``: ``float32`` or ``bfloat16``
    (autocast; the spec's GPU protocol is bf16, >= 20 warm-up and >= 100 timed runs: ``warmup=20,
    repeats=100``). ``warmup`` untimed runs of each encoder come first. The FLOP count depends on neither.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if warmup < 1 or repeats < 1:
        raise ValueError(f"warmup and repeats must be >= 1, got {warmup} and {repeats}")
    dev = torch.device(device)
    cast = torch.autocast(dev.type, dtype=DTYPES[dtype]) if DTYPES[dtype] is not None else nullcontext()
    vit = build_encoder(model, image_size)
    comp = BackboneCompression(compress, ratio, start_block=start_block, scope=scope, mode=mode)
    vit.set_compression(comp)
    vit.to(dev)
    comp.to(dev).eval()
    image, source = bench_image(image_size, data_root)
    image = image.to(dev)
    runs: dict[str, list[float]] = {"dense": [], "compressed": []}
    outs: dict[str, torch.Tensor] = {}
    with torch.inference_mode(), cast:
        for step in range(warmup + repeats):  # the first ``warmup`` steps of both are not timed
            for name in ("dense", "compressed"):
                vit.compression = comp if name == "compressed" else None
                seconds, outs[name] = _timed(lambda: vit(image), dev)
                if step >= warmup:
                    runs[name].append(seconds)
    vit.compression = comp
    dense_f = encoder_flops(vit, (image_size, image_size))
    comp_f = encoder_flops(vit, (image_size, image_size), comp.trace)
    hw = image_size // vit.patch_size
    kinds = ["global" if (blk.window_size == 0) else f"window {blk.window_size}" for blk in vit.blocks]
    lat = {k: statistics.median(v) for k, v in runs.items()}
    cos = F.cosine_similarity(outs["dense"].float().flatten(2), outs["compressed"].float().flatten(2), dim=1).mean()
    return {
        "model": model, "image_size": image_size, "grid": hw, "compress": compress, "ratio": ratio,
        "start_block": start_block, "mode": mode, "scope": scope, "repeats": repeats, "input": source,
        "device": str(dev), "threads": torch.get_num_threads(), "block_kinds": kinds, "trace": comp.trace,
        "dtype": dtype, "warmup": warmup, "p90": {k: p90(v) for k, v in runs.items()},
        "flops_dense": dense_f, "flops_compressed": comp_f, "latency": lat, "runs": runs,
        "speedup": lat["dense"] / lat["compressed"], "ideal": dense_f["total"] / comp_f["total"],
        "ideal_model_only": dense_f["total"] / comp_f["model"], "neck_cosine": float(cos),
        "shape_equal": outs["dense"].shape == outs["compressed"].shape,
    }


def format_backbone(r: dict[str, Any]) -> str:
    """Markdown table and summary lines of :func:`bench_backbone`'s result."""
    g = 1e9
    n0 = r["grid"] ** 2
    lines = [
        f"encoder: SAM {r['model']} layout, randomly initialised (no SAM weights can be downloaded here; latency "
        "and FLOPs do not depend on the weights)",
        f"input: {r['image_size']} px ({r['grid']}x{r['grid']} = {n0} tokens), {r['input']}; "
        f"{_where(r)}; batch 1; {r.get('dtype', 'float32')}; fused SDPA in both",
        f"compression: {r['compress']} ratio {r['ratio']} (fraction removed) at block {r['start_block']}, "
        f"scope {r['scope']}, mode {r['mode']}; restored before the neck (outputs equal in shape: {r['shape_equal']})",
        "",
        "| block | attention | tokens dense | tokens kept | GFLOPs dense | GFLOPs compressed | of which compressor |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, kind, fd, fc in zip(r["trace"], r["block_kinds"], r["flops_dense"]["blocks"],
                               r["flops_compressed"]["blocks"], strict=True):
        lines.append(f"| {t.block} | {kind} | {n0} | {t.tokens:.0f} | {fd['total'] / g:.2f} | {fc['total'] / g:.2f} | "
                     f"{fc['compressor'] / g:.3f} |")
    fd, fc = r["flops_dense"], r["flops_compressed"]
    lines.append(f"| stem + neck | | | | {fd['stem_neck'] / g:.2f} | {fc['stem_neck'] / g:.2f} | |")
    lines.append(f"| **total** | | | | **{fd['total'] / g:.1f}** | **{fc['total'] / g:.1f}** | "
                 f"{fc['compressor'] / g:.2f} |")
    lat = r["latency"]
    kept = sum(t.tokens for t in r["trace"]) / (len(r["trace"]) * n0)
    lines += [
        "",
        f"token-layers kept: {100 * kept:.1f}% of {len(r['trace'])} x {n0}",
        f"latency (median of {r['repeats']} after {r.get('warmup', 1)} warm-up, interleaved): dense "
        f"{lat['dense']:.4f} s (p90 {r['p90']['dense']:.4f}), compressed {lat['compressed']:.4f} s "
        f"(p90 {r['p90']['compressed']:.4f})" + (
            f"; runs dense {[round(v, 3) for v in r['runs']['dense']]}, compressed "
            f"{[round(v, 3) for v in r['runs']['compressed']]}" if r["repeats"] <= 10 else ""),
        f"speed-up: measured {r['speedup']:.2f}x, ideal (FLOPs incl. compressor) {r['ideal']:.2f}x "
        f"(model FLOPs only {r['ideal_model_only']:.2f}x)",
        f"neck-output cosine compressed vs dense: {r['neck_cosine']:.4f} (random weights: not an accuracy figure)",
    ]
    return "\n".join(lines)


def _where(r: dict[str, Any]) -> str:
    """``2 threads`` on CPU (as before devices were recorded), the device's name on CUDA."""
    device = r.get("device", "cpu")
    if device.startswith("cuda"):
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return f"{r['threads']} threads"
