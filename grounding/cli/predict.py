"""``grounding predict`` (sentences about one 3D scene or one photo) and ``grounding export`` (checkpoint ->
safetensors)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="Find what sentences refer to in a 3D scene (RG-SAN / MDIN) or a photo "
                       "(DIT masks / box retrieval).",
                       description="--scene: writes, per sentence, NN_<slug>.npy (bool mask over the input points, "
                       "input order), a coloured NN_<slug>.ply and a PNG render (skipped with a warning without "
                       "Vulkan), plus predictions.json. MDIN may answer 'no target' (an all-False mask). --image: a "
                       "DIT model writes NN_<slug>.png masks at the photo's resolution and NN_<slug>_overlay.png; a "
                       "box-retrieval model chooses among candidate boxes (--boxes or --sam-checkpoint) and writes "
                       "predictions.json (xyxy pixels) and NN_<slug>_overlay.png.")
    p.add_argument("texts", nargs="+", help="one or more sentences")
    p.add_argument("--model", type=Path, required=True, help="export folder (grounding export) or a run's .ckpt")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--scene", type=Path, default=None, help=".ply (mesh or point cloud), .pcd, .npy (N x 6: "
                        "xyz + rgb 0-255), a ScanNet scan folder or a prepared scene folder")
    source.add_argument("--image", type=Path, default=None, help="a .jpg / .png photo (DIT and box-retrieval models)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--config", type=Path, default=None, help="run config overriding the one found with the model")
    p.add_argument("--superpoints", type=Path, default=None, help="(N,) integer .npy of superpoint ids to use "
                   "instead of the input's own or computed ones")
    p.add_argument("--axis-align", default=None, metavar="TXT", help="apply a ScanNet axisAlignment: a <scene>.txt "
                   "path, or 'auto' for <scene>.txt inside a scan folder (the models were trained unaligned)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default cpu)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG renders")
    p.add_argument("--no-ply", action="store_true", help="skip the coloured .ply files")
    p.add_argument("--boxes", type=Path, default=None, help="--image, box retrieval: candidate boxes, a JSON list "
                   "[[x0, y0, x1, y1], ...] in pixels, or {\"boxes\": [...], \"format\": \"xyxy\" | \"xywh\"}")
    p.add_argument("--sam-checkpoint", type=Path, default=None, help="--image, box retrieval: an official SAM "
                   "checkpoint whose automatic masks give the candidates when --boxes is not given")
    p.add_argument("--sam-model-type", default="vit_b", help="size of --sam-checkpoint: vit_b, vit_l or vit_h")


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


def run_image(args: argparse.Namespace) -> int:
    """``grounding predict --image``: a DIT or box-retrieval model on one photo."""
    from grounding.predict import Predictor2D, UnsafeCheckpointError
    from grounding.predict.image import read_boxes_file
    from grounding.predict.outputs2d import write_box_predictions, write_mask_predictions

    for flag, value in (("--superpoints", args.superpoints), ("--axis-align", args.axis_align)):
        if value is not None:
            print(f"grounding predict: error: {flag} is for --scene, not --image", file=sys.stderr)
            return 2
    try:
        predictor = Predictor2D.from_pretrained(args.model, device=None if args.device == "auto" else args.device,
                                                config=args.config, sam_checkpoint=args.sam_checkpoint,
                                                sam_model_type=args.sam_model_type)
    except UnsafeCheckpointError as e:
        print(f"grounding predict: error: {e}", file=sys.stderr)
        return 2
    image = predictor.load(args.image)
    rgb = image.permute(1, 2, 0).numpy()
    if predictor.kind == "mask":
        if args.boxes is not None or args.sam_checkpoint is not None:
            print("grounding predict: error: --boxes / --sam-checkpoint are for box-retrieval models; "
                  f"{args.model} is a DIT (mask) model", file=sys.stderr)
            return 2
        masks = predictor(image, args.texts)
        summary = write_mask_predictions(args.out, rgb, masks, source=str(args.image), model=str(args.model))
        for entry in summary["predictions"]:
            print(f"[{entry['index']}] {entry['text']!r}: {entry['num_pixels']} pixels -> {entry['mask']}")
    else:
        try:
            candidates = predictor.candidates(image, read_boxes_file(args.boxes) if args.boxes is not None else None)
        except ValueError as e:
            print(f"grounding predict: error: {e}", file=sys.stderr)
            return 2
        answers = predictor(image, args.texts, boxes=candidates)
        summary = write_box_predictions(args.out, rgb, answers, candidates, source=str(args.image),
                                        model=str(args.model),
                                        candidate_source=str(args.boxes) if args.boxes is not None else "sam")
        for entry in summary["predictions"]:
            answer = "no target" if entry["box"] is None else f"box {entry['box']} (candidate {entry['candidate']})"
            print(f"[{entry['index']}] {entry['text']!r}: {answer}, score {entry['score']:.3f}")
    print(f"wrote {len(summary['predictions'])} prediction(s) and predictions.json under {args.out}")
    return 0


def run(args: argparse.Namespace) -> int:
    import numpy as np

    if args.image is not None:
        return run_image(args)

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
