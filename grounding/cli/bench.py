"""``grounding bench``: speed and memory measurements (record them in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="Measure speed and memory.",
                       description="Measure speed and memory; prints the command, the machine and the date "
                       "with the numbers, ready for docs/benchmarks.md.")
    kinds = p.add_subparsers(dest="bench", metavar="WHAT")
    kinds.required = True
    b = kinds.add_parser("prepare", help="seconds per scene of the ScanNet preparer on ScanNet-sized scans")
    b.add_argument("--preset", default="scannet", choices=["tiny", "demo", "scannet"])
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--work-dir", type=Path, default=None, help="where the generated scans are cached")
    r = kinds.add_parser("rgsan", help="RG-SAN forward latency per scene / description and peak memory")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    r.add_argument("--descriptions", type=int, default=64)
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--precision", default="32", choices=["32", "16-mixed"])
    r.add_argument("--work-dir", type=Path, default=None, help="where the generated scans are cached")
    r.add_argument("overrides", nargs="*", help="hydra overrides of the model, e.g. model.net.use_rpe=false")
    v = kinds.add_parser("backbone", help="compressed vs uncompressed SAM ViT encoder: tokens, FLOPs, latency",
                         description="Runs the encoder with and without a token-compression schedule in one process "
                         "on the same input, interleaved; see docs/compression.md.")
    v.add_argument("--image-size", type=int, default=1024)
    v.add_argument("--compress", default="tome", choices=["tome", "prune", "pool"])
    v.add_argument("--ratio", type=float, default=0.5, help="fraction of image tokens removed (ToMe: <= 0.5)")
    v.add_argument("--start-block", type=int, default=2)
    v.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    v.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder, after one warm-up each")
    v.add_argument("--mode", default="gather", choices=["gather", "mask"])
    v.add_argument("--scope", default="auto", choices=["auto", "window", "global"])
    v.add_argument("--data-root", type=Path, default=Path("data/synthetic2d"))
    v.add_argument("--mask-iou", action="store_true",
                   help="also compare compressed vs uncompressed masks on generated validation pictures")
    v.add_argument("--sam-checkpoint", type=Path, default=None, help="official SAM file for --mask-iou")
    v.add_argument("--dit-run", type=Path, default=None,
                   help="trained DIT run folder for --mask-iou (default: outputs/dit_b when present)")
    v.add_argument("--limit", type=int, default=None, help="--mask-iou: at most this many expressions")


def run(args: argparse.Namespace) -> int:
    from grounding.bench import header

    command = "grounding " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.bench == "prepare":
        from grounding.bench.prepare import bench_prepare

        r = bench_prepare(args.work_dir, preset=args.preset, seed=args.seed, repeats=args.repeats)
        print(header(command))
        print(f"scenes: {r['scenes']}, median points: {r['median_points']:.0f}")
        print(f"prepare: median {r['median_seconds']:.3f} s/scene, max {r['max_seconds']:.3f} s, "
              f"{r['points_per_second'] / 1e3:.0f}k points/s, peak RSS {r['peak_rss_mib']:.0f} MiB (one core)")
    elif args.bench == "rgsan":
        import torch

        from grounding.bench.rgsan import bench_rgsan

        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        r = bench_rgsan(device, repeats=args.repeats, descriptions=args.descriptions, work_dir=args.work_dir,
                        overrides=args.overrides, precision=args.precision)
        print(header(command))
        print(f"scene {r['scene']}: {r['points']} points, {r['voxels']} voxels, {r['superpoints']} superpoints, "
              f"{r['descriptions']} descriptions; text encoder {r['text_encoder']}; {r['device']} {r['precision']}")
        print(f"forward (median of {r['repeats']}): {r['seconds_per_scene']:.3f} s/scene, "
              f"{1e3 * r['seconds_per_description']:.1f} ms/description "
              f"(backbone {r['backbone_seconds']:.3f} s, text + decoder {r['rest_seconds']:.3f} s)")
        growth = "" if r["peak_growth_mib"] is None else f" (+{r['peak_growth_mib']:.0f} MiB during the forwards)"
        print(f"peak memory: {r['peak_mib']:.0f} MiB{growth}")
    elif args.bench == "backbone":
        return _run_backbone(args, header(command))
    return 0


def _run_backbone(args: argparse.Namespace, head: str) -> int:
    from grounding.backbone.compression import BackboneCompression
    from grounding.bench.backbone import bench_backbone, format_backbone

    r = bench_backbone(args.image_size, args.compress, args.ratio, args.start_block, args.model, args.repeats,
                       args.mode, args.scope, args.data_root)
    print(head)
    print(format_backbone(r))
    if not args.mask_iou:
        return 0
    from grounding.bench.mask_iou import dit_mask_agreement, sam_mask_agreement

    def schedule() -> BackboneCompression:
        return BackboneCompression(args.compress, args.ratio, start_block=args.start_block, scope=args.scope,
                                   mode=args.mode)

    results = []
    if args.sam_checkpoint is not None:
        results.append(sam_mask_agreement(args.sam_checkpoint, schedule(), args.model, args.image_size,
                                          args.data_root, args.limit or 32))
    else:
        print("mask IoU: no --sam-checkpoint given (no SAM weights here), so SAM's own masks are not checked")
    dit_run = args.dit_run or (Path("outputs/dit_b") if (Path("outputs/dit_b") / "config.yaml").is_file() else None)
    if dit_run is not None:
        results.append(dit_mask_agreement(dit_run, schedule(), args.limit))
    for m in results:
        line = (f"mask IoU compressed vs uncompressed predictions: mean {m['mean_iou']:.3f}, p10 {m['p10_iou']:.3f} "
                f"over {m['samples']} samples; tokens per block {m['tokens_per_block']}; {m['source']}")
        if "miou_dense" in m:
            line += (f"; mIoU vs ground truth: uncompressed {m['miou_dense']:.1f}, compressed "
                     f"{m['miou_compressed']:.1f} ({m['retained']:.1f}% retained)")
        print(line)
    if not results:
        print("mask IoU: nothing to compare (pass --sam-checkpoint or --dit-run)")
    return 0
