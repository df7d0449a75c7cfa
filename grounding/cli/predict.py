"""``grounding predict`` (sentences about one 3D scene) and ``grounding export`` (checkpoint -> safetensors)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="Segment what sentences refer to in a 3D scene (RG-SAN / MDIN).",
                       description="Writes, per sentence, NN_<slug>.npy (bool mask over the input points, input "
                       "order), a coloured NN_<slug>.ply and a PNG render (skipped with a warning without Vulkan), "
                       "plus predictions.json. MDIN may answer 'no target' (an all-False mask).")
    p.add_argument("texts", nargs="+", help="one or more sentences")
    p.add_argument("--model", type=Path, required=True, help="export folder (grounding export) or a run's .ckpt")
    p.add_argument("--scene", type=Path, required=True, help=".ply (mesh or point cloud), .pcd, .npy (N x 6: xyz + "
                   "rgb 0-255), a ScanNet scan folder or a prepared scene folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None, help="run config overriding the one found with the model")
    p.add_argument("--superpoints", type=Path, default=None, help="(N,) integer .npy of superpoint ids to use "
                   "instead of the input's own or computed ones")
    p.add_argument("--axis-align", default=None, metavar="TXT", help="apply a ScanNet axisAlignment: a <scene>.txt "
                   "path, or 'auto' for <scene>.txt inside a scan folder (the models were trained unaligned)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG renders")
    p.add_argument("--no-ply", action="store_true", help="skip the coloured .ply files")


def add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="Export a checkpoint as model.safetensors + config.yaml (no pickle).",
                       description="Reads a Lightning checkpoint of `grounding train` with torch.load(weights_only="
                       "True) and writes DIR/model.safetensors (the network's weights; frozen text-encoder weights "
                       "left out, they are rebuilt from the config) and DIR/config.yaml (the run's resolved config).")
    p.add_argument("checkpoint", type=Path, help="<run_dir>/checkpoints/*.ckpt")
    p.add_argument("--out", type=Path, required=True, help="export folder (created)")
    p.add_argument("--config", type=Path, default=None, help="the run's config.yaml (default: <run_dir>/config.yaml)")
    p.add_argument("--allow-pickle", action="store_true", help="read a checkpoint that needs full unpickling; only "
                   "for files you trust (unpickling can run code)")


def run_export(args: argparse.Namespace) -> int:
    from grounding.export import export_checkpoint
    from grounding.predict.weights import UnsafeCheckpointError

    try:
        out = export_checkpoint(args.checkpoint, args.out, config=args.config, allow_pickle=args.allow_pickle)
    except UnsafeCheckpointError as e:
        print(f"grounding export: error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} -> {out}/model.safetensors, {out}/config.yaml")
    return 0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from grounding.predict import Predictor3D, UnsafeCheckpointError, load_scene
    from grounding.predict.outputs import write_predictions

    try:
        predictor = Predictor3D.from_pretrained(args.model, device=None if args.device == "auto" else args.device,
                                                config=args.config)
    except UnsafeCheckpointError as e:
        print(f"grounding predict: error: {e}", file=sys.stderr)
        return 2
    superpoint = np.load(args.superpoints, allow_pickle=False) if args.superpoints is not None else None
    align = True if args.axis_align == "auto" else args.axis_align
    scene = load_scene(args.scene, superpoint=superpoint, axis_alignment=align)
    masks = predictor(scene, args.texts)
    summary = write_predictions(args.out, scene, masks, model=str(args.model), png=not args.no_png,
                                ply=not args.no_ply)
    for entry in summary["predictions"]:
        answer = "no target" if entry.get("no_target") else f"{entry['num_points']} points"
        print(f"[{entry['index']}] {entry['text']!r}: {answer} -> {entry['mask']}")
    print(f"wrote {len(masks)} prediction(s) and predictions.json under {args.out}")
    return 0
