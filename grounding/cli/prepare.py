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

    r = kinds.add_parser("refcoco", help="Check a RefCOCO/RefCOCO+/RefCOCOg root and count its splits.",
                         description="Reads <root>/<dataset>/refs(<split_by>).p and instances.json of refcoco, "
                         "refcoco+ and refcocog, prints refs and sentences per dataset, partition and split, and "
                         "exits non-zero naming any missing file, unreadable record or missing image.")
    r.add_argument("--root", required=True, type=Path, help="folder holding refcoco/, refcoco+/, refcocog/")
    r.add_argument("--images", type=Path, default=None,
                   help="COCO train2014 images (default <root>/images/train2014 or <root>/train2014)")

    i = kinds.add_parser("synthetic2d", help="Generate referring-expression images in the RefCOCO layout.",
                         description="Writes <out>/images/train2014/COCO_train2014_<id>.jpg and "
                         "<out>/synthetic2d/{refs(unc).p,instances.json,scenes.json,meta.json}: coloured shapes "
                         "and silhouettes with verified one-object expressions. Deterministic from --seed.")
    i.add_argument("--out", required=True, type=Path)
    i.add_argument("--preset", default="demo", choices=["tiny", "demo"])
    i.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    if args.dataset == "refcoco":
        return _run_refcoco(args)
    if args.dataset == "synthetic2d":
        from datasets.synthetic.images import generate_synthetic2d

        print(generate_synthetic2d(args.out, preset=args.preset, seed=args.seed).summary())
        return 0
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


def _run_refcoco(args: argparse.Namespace) -> int:
    from datasets.refcoco_check import check_refer_root

    report = check_refer_root(args.root, images_dir=args.images)
    print(report.summary())
    return 0 if report.ok else 1
