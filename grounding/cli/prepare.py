"""``grounding prepare``: turn raw datasets (real or generated) into prepared scene folders."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="Prepare datasets: ScanNet v2 scans, generated synthetic rooms.",
                       description="Prepare datasets into the per-scene folders the 3D tasks read.")
    kinds = p.add_subparsers(dest="dataset", metavar="DATASET")
    kinds.required = True

    s = kinds.add_parser("scannet", help="ScanNet v2 raw scans -> prepared scene folders.",
                         description="Reads <raw>/scans/<scene>/ (or <raw>/<scene>/) with the four raw files "
                         "of each scan and writes <out>/<scene>/{coord,color,superpoint,semantic,instance}.npy "
                         "and meta.json. Idempotent: up-to-date scenes are skipped.")
    s.add_argument("--raw", required=True, type=Path, help="ScanNet folder holding scans/")
    s.add_argument("--out", required=True, type=Path, help="output folder of prepared scenes")
    s.add_argument("--split-file", type=Path, default=None, help="scene list, e.g. scannetv2_val.txt")
    s.add_argument("--workers", type=int, default=1, help="parallel processes")
    s.add_argument("--force", action="store_true", help="re-prepare scenes that are up to date")

    g = kinds.add_parser("synthetic3d", help="Generate synthetic rooms in ScanNet raw format and prepare them.",
                         description="Writes <out>/raw/ (ScanNet raw files, label map, split lists), the "
                         "ScanRefer- and Multi3DRefer-format json files in <out>/, and prepared scenes in "
                         "<out>/scenes/. Deterministic from --seed.")
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--preset", default="demo", choices=["tiny", "demo", "scannet"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--force", action="store_true", help="re-prepare scenes that are up to date")


def run(args: argparse.Namespace) -> int:
    from datasets.scannet.prepare import prepare_scannet

    if args.dataset == "scannet":
        report = prepare_scannet(args.raw, args.out, split_file=args.split_file, workers=args.workers,
                                 force=args.force)
    else:
        from datasets.synthetic import generate_synthetic

        gen = generate_synthetic(args.out, preset=args.preset, seed=args.seed, workers=args.workers)
        print(gen.summary())
        report = prepare_scannet(Path(args.out) / "raw", Path(args.out) / "scenes", workers=args.workers,
                                 force=args.force)
    print(report.summary())
    return 1 if report.failed else 0
