"""``grounding bench``: speed and memory measurements (record them in docs/benchmarks.md)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DOC = Path("docs/benchmarks.md")


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
    s = kinds.add_parser("superpoints", help="seconds per scan of mesh and point-cloud superpoints, on one core",
                         description="Times ScanNet's mesh superpoint segmentation and its point-cloud (kNN) variant "
                         "on a generated ScanNet-sized scan (the smallest with 150k+ vertices), pinned to one CPU "
                         "with one thread; median of --repeats after one warm-up each.")
    s.add_argument("--preset", default="scannet", choices=["tiny", "demo", "scannet"])
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--min-vertices", type=int, default=150_000,
                   help="time the smallest scan with at least this many vertices (else the largest)")
    s.add_argument("--work-dir", type=Path, default=None, help="where the generated scans are cached")
    r = kinds.add_parser("rgsan", help="RG-SAN forward latency per scene / description and peak memory")
    r.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda when available)")
    r.add_argument("--descriptions", type=int, default=None,
                   help="descriptions per scene (default 64 for the forward pass, 16 per item with --train)")
    r.add_argument("--repeats", type=int, default=5)
    r.add_argument("--precision", default="32", choices=["32", "16-mixed", "bf16-mixed"],
                   help="bf16-mixed: --train only")
    r.add_argument("--train", action="store_true",
                   help="time a training step (forward, loss, backward, AdamW) on --items scenes instead")
    r.add_argument("--items", type=int, default=8, help="--train: batch items (distinct scenes first)")
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
    v.add_argument("--device", default="cpu", help="cpu or cuda (timed with CUDA events)")
    v.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16: autocast, as the spec's GPU protocol (with --warmup 20 --repeats 100)")
    v.add_argument("--warmup", type=int, default=1, help="untimed runs of each encoder before the timed ones")
    v.add_argument("--mode", default="gather", choices=["gather", "mask"])
    v.add_argument("--scope", default="auto", choices=["auto", "window", "global"])
    v.add_argument("--data-root", type=Path, default=Path("data/synthetic2d"))
    v.add_argument("--mask-iou", action="store_true",
                   help="also compare compressed vs uncompressed masks on generated validation pictures")
    v.add_argument("--sam-checkpoint", type=Path, default=None, help="official SAM file for --mask-iou")
    v.add_argument("--dit-run", type=Path, default=None,
                   help="trained DIT run folder for --mask-iou (default: outputs/dit_b when present)")
    v.add_argument("--limit", type=int, default=None, help="--mask-iou: at most this many expressions")
    a = kinds.add_parser("all", help="every benchmark; rewrites the table of docs/benchmarks.md",
                         description="Runs every benchmark (prepare, superpoints, rgsan, backbone; CUDA variants too "
                         "when a GPU is present), each in a fresh process, printing each report as it comes, then "
                         "rewrites the marked table block of --doc: this machine's rows are replaced, other "
                         "machines' rows and the prose are kept. A failed benchmark is reported and marked FAILED; "
                         "the others still run and the exit code is 1.")
    a.add_argument("--doc", type=Path, default=None,
                   help=f"the Markdown file whose table is rewritten (default {DOC}; --quick: nothing is written "
                   "unless --doc names another file)")
    a.add_argument("--quick", action="store_true",
                   help="smoke check: tiny presets, tiny encoder, one repeat; figures marked 'quick:'")
    a.add_argument("--only", default=None, metavar="NAME,...",
                   help="run only these benchmarks (kinds: prepare, superpoints, rgsan, backbone; or job names, "
                   "e.g. rgsan-cpu, backbone-tome-0.5); only their rows of this machine are replaced")
    a.add_argument("--dry-run", action="store_true", help="print the table, write nothing")
    a.add_argument("--work-dir", type=Path, default=None,
                   help="cache of the generated scans, one folder per preset (default: the temp folder)")
    a.add_argument("--in-process", action="store_true",
                   help="run the benchmarks in this process (debugging; peak-memory figures then include the "
                   "benchmarks before)")


def run(args: argparse.Namespace) -> int:
    from grounding.bench import header

    command = "grounding " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.bench == "all":
        return _run_all(args)
    if args.bench == "backbone":
        return _run_backbone(args, command)
    from grounding.bench.all import measure

    m = measure(args)
    print(header(command))
    print(m.text)
    return 0


def _run_all(args: argparse.Namespace) -> int:
    doc = args.doc
    if args.quick and doc is not None and _is_repo_doc(doc):
        print(f"bench all: --quick figures are never written to {DOC}; pass another --doc", file=sys.stderr)
        return 2
    if doc is None and not args.quick and not args.dry_run:
        doc = DOC
        if not doc.is_file():
            print(f"bench all: no {DOC} here: run from the repository root or pass --doc", file=sys.stderr)
            return 2
    import torch

    from grounding.bench.all import plan, run_all, select

    try:
        jobs = select(plan(args.quick, torch.cuda.is_available(), args.work_dir), args.only)
    except ValueError as e:
        print(f"bench all: {e}", file=sys.stderr)
        return 2
    if args.quick and doc is None:
        print("bench all: --quick writes a table only to an explicit --doc (never to docs/benchmarks.md)")
    return run_all(jobs, None if args.dry_run else doc, quick=args.quick, isolate=not args.in_process,
                   replace_all=args.only is None)


def _is_repo_doc(path: Path) -> bool:
    """Whether ``path`` is docs/benchmarks.md of this checkout or of the working directory."""
    import grounding

    repo_doc = Path(grounding.__file__).resolve().parents[1] / DOC
    return path.resolve() in {repo_doc, DOC.resolve()}


def _run_backbone(args: argparse.Namespace, command: str) -> int:
    from grounding.backbone.compression import BackboneCompression
    from grounding.bench import header
    from grounding.bench.all import measure

    m = measure(args)
    print(header(command))
    print(m.text)
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
                     f"{m['miou_compressed']:.1f} ({m['retained']:.1f}% retained); encoder time over the batches "
                     f"(batch {m['batch_size']}, interleaved): dense {m['encoder_seconds']['dense']:.2f} s, compressed "
                     f"{m['encoder_seconds']['compressed']:.2f} s, speed-up {m['encoder_speedup']:.2f}x")
        print(line)
    if not results:
        print("mask IoU: nothing to compare (pass --sam-checkpoint or --dit-run)")
    return 0
