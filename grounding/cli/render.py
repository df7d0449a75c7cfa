"""``grounding render``: draw predictions (``predictions.jsonl`` of ``grounding eval``).

3D (``--scenes``): Open3D, offscreen to PNG by default (no display needed); ``--ply`` also writes coloured point
clouds; ``--show`` opens an interactive window per prediction when a display exists.
2D (``--refer-root`` and ``--dataset``): PNG overlays of the predicted and ground-truth masks on the images.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render", help="Render predictions to PNG: 3D over their scenes, 2D over their images.",
                       description="Reads predictions.jsonl of `grounding eval`. 3D (--scenes): writes "
                       "<out>/<scene_id>/<sample>__<description>.png with the prediction and the ground truth in "
                       "distinct colours and the description as caption, plus index.json per scene. 2D "
                       "(--refer-root, --dataset): writes <out>/<sent_id>.png, the prediction filled in green, "
                       "the ground truth outlined in red, the expression as caption.")
    p.add_argument("predictions", type=Path, help="predictions.jsonl written by `grounding eval`")
    p.add_argument("--scenes", type=Path, default=None, help="3D: the prepared scene folders the predictions used")
    p.add_argument("--refer-root", type=Path, default=None, help="2D: the refer layout root (refcoco, synthetic2d)")
    p.add_argument("--dataset", default=None, help="2D: refcoco, refcoco+, refcocog or synthetic2d")
    p.add_argument("--split-by", default=None, help="2D: partition (default: the dataset's usual one)")
    p.add_argument("--images", type=Path, default=None, help="2D: COCO train2014 folder (default under the root)")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: <predictions dir>/renders)")
    p.add_argument("--sample", action="append", default=[], metavar="ID", help="render only this sample id; "
                   "repeatable")
    p.add_argument("--scene", action="append", default=[], metavar="SCENE", help="only this scene; repeatable")
    p.add_argument("--limit", type=int, default=None, help="render at most this many predictions")
    p.add_argument("--view", default="auto", choices=["auto", "top", "overview"], help="camera (default auto)")
    p.add_argument("--size", default="960x720", help="PNG size WIDTHxHEIGHT (default 960x720)")
    p.add_argument("--ply", action="store_true", help="also write a coloured .ply next to each PNG")
    p.add_argument("--show", action="store_true", help="open an interactive Open3D window per prediction")


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"grounding render: error: --size must look like 960x720, got {text!r}") from None
    return w, h


def run(args: argparse.Namespace) -> int:
    if (args.scenes is None) == (args.refer_root is None):
        raise SystemExit("grounding render: error: give --scenes (3D predictions) or --refer-root with --dataset "
                         "(2D predictions)")
    if args.refer_root is not None:
        return _run_2d(args)
    from tqdm import tqdm

    from pointcloud.render_predictions import read_predictions, render_predictions, select_predictions

    width, height = _size(args.size)
    preds = select_predictions(read_predictions(args.predictions), args.sample or None, args.scene or None,
                               args.limit)
    if not preds:
        print(f"grounding render: nothing to render in {args.predictions} for that selection")
        return 1
    out = args.out or Path(args.predictions).parent / "renders"
    with tqdm(total=len(preds), unit="image", desc="render") as bar:
        paths = render_predictions(args.predictions, args.scenes, out, preds=preds, ply=args.ply,
                                   progress=lambda done, total: bar.update(done - bar.n),
                                   width=width, height=height, view=args.view)
    print(f"wrote {len(paths)} PNG(s){' and .ply files' if args.ply else ''} under {out}")
    if args.show:
        _show(args, preds)
    return 0


def _run_2d(args: argparse.Namespace) -> int:
    from segmentation.render import render_ris_predictions

    if not args.dataset:
        raise SystemExit("grounding render: error: --refer-root needs --dataset (e.g. refcoco or synthetic2d)")
    out = args.out or Path(args.predictions).parent / "renders"
    paths = render_ris_predictions(args.predictions, args.refer_root, args.dataset, out, split_by=args.split_by,
                                   images_dir=args.images, samples=args.sample or None, limit=args.limit)
    print(f"wrote {len(paths)} PNG(s) under {out}")
    return 0 if paths else 1


def _show(args: argparse.Namespace, preds: list) -> None:
    from datasets.scannet.scene import PreparedScene
    from pointcloud.render import show_interactive
    from pointcloud.render_predictions import prediction_masks

    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        print("--show: no display (DISPLAY / WAYLAND_DISPLAY unset); the PNGs above are written anyway")
        return
    for p in preds:
        rec = p.record
        scene = PreparedScene.load(Path(args.scenes) / rec["scene_id"], require_superpoints=False)
        mask, gt = prediction_masks(p, scene, args.predictions)
        show_interactive(scene.coord, scene.color, mask, gt, title=rec["description"])
