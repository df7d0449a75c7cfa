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
    return 0
