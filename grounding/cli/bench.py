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
    return 0
