"""``grounding demo`` (``make demo``): the toolkit's main job, end to end on the CPU.

1. Generate and prepare the ``demo`` synthetic rooms under ``${paths.data_dir}/synthetic3d`` if they are absent.
2. Score two reference rows on the val split: a random instance of the named class (expected value, from the
   data alone) and RG-SAN before training (the same seed's initial weights).
3. Train RG-SAN with ``configs/experiment/rgsan_synthetic.yaml`` (progress bar, a hard time limit).
4. Evaluate it on the val split and print the three rows side by side.
5. Write ``<out>/metrics.json`` and render predicted vs ground-truth masks of several descriptions to
   ``<out>/renders/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

EXPERIMENT = "rgsan_synthetic"
GROUPS = ("overall", "unique", "multiple")
COLUMNS = ("miou", "acc@0.25", "acc@0.5")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Train and evaluate RG-SAN on generated rooms on the CPU, render masks.",
                       description="Generates the demo rooms if absent, trains RG-SAN (configs/experiment/"
                       "rgsan_synthetic.yaml) within a time limit, evaluates it on the val split next to two "
                       "reference rows, writes <out>/metrics.json and renders predictions to <out>/renders/.")
    p.add_argument("--out", type=Path, default=Path("outputs/demo"), help="output folder (default outputs/demo)")
    p.add_argument("--data", type=Path, default=None,
                   help="synthetic dataset folder (default ${paths.data_dir}/synthetic3d)")
    p.add_argument("--max-minutes", type=float, default=10.0, help="training time limit (default 10)")
    p.add_argument("--renders", type=int, default=8, help="descriptions to render (default 8)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the experiment's)")
    p.add_argument("overrides", nargs="*", help="extra hydra overrides of the experiment, e.g. "
                   "trainer.max_epochs=2 model.net.position_refinement=false")


def run(args: argparse.Namespace) -> int:
    from grounding.engine.config import load_config

    out = args.out.resolve()
    overrides = [f"experiment={EXPERIMENT}", *args.overrides]
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.data is not None:
        overrides.append(f"data.root={args.data.resolve()}")
    base = load_config("train", overrides + [f"run_dir={out / 'train'}"])
    data_root = Path(str(base.data.root))
    ensure_demo_data(data_root)

    started = time.time()
    reference = {"random_class_instance": random_class_row(base),
                 "untrained": evaluate(overrides, out / "eval_untrained", ckpt=None)["metrics"]}
    train_seconds = train(overrides, out / "train", args.max_minutes)
    ckpt = out / "train" / "checkpoints" / "last.ckpt"
    result = evaluate(overrides, out / "eval", ckpt=ckpt)
    summary = write_summary(out, result, reference, train_seconds, time.time() - started, args)
    print(format_table(summary))
    renders = render_examples(out / "eval" / "predictions.jsonl", data_root / "scenes", out / "renders",
                              args.renders)
    print(f"\nmetrics: {out / 'metrics.json'}\nrenders: {len(renders)} PNGs in {out / 'renders'}")
    return 0


def ensure_demo_data(root: Path) -> None:
    """Generate and prepare the ``demo`` preset at ``root`` unless its val split is already prepared."""
    from datasets.scannet.prepare import prepare_scannet
    from datasets.synthetic import generate_synthetic

    if (root / "ScanRefer_filtered_val.json").is_file() and (root / "synthetic_stats.json").is_file():
        report = prepare_scannet(root / "raw", root / "scenes")  # idempotent: only missing scenes are prepared
        if report.failed:
            raise RuntimeError(report.summary())
        return
    print(f"generating the demo rooms in {root} (about 30 s)")
    print(generate_synthetic(root, preset="demo", seed=0).summary())
    report = prepare_scannet(root / "raw", root / "scenes")
    print(report.summary())
    if report.failed:
        raise RuntimeError(report.summary())


def random_class_row(cfg: Any) -> dict[str, Any]:
    """Expected metrics of a random instance of the named class on the configured val split."""
    from datasets.reference3d import random_class_instance_row
    from datasets.scanrefer import load_scanrefer

    val = cfg.data.val
    records = load_scanrefer(str(val.annotations), label_map=str(val.label_map))
    strict = bool(cfg.model.evaluator.get("strict", True))
    return random_class_instance_row(records, str(val.scenes_dir), str(val.label_map),
                                     thresholds=tuple(cfg.model.evaluator.thresholds), strict=strict)


def _fresh(run_dir: Path) -> None:
    # The demo owns <out>: a re-run starts from scratch instead of resuming an older run.
    if run_dir.exists():
        shutil.rmtree(run_dir)


def train(overrides: list[str], run_dir: Path, max_minutes: float) -> float:
    """Train into ``run_dir``; Lightning stops at ``max_minutes`` even if epochs remain. Returns seconds."""
    from grounding.engine import run
    from grounding.engine.config import load_config

    _fresh(run_dir)
    limit = time.strftime("%H:%M:%S", time.gmtime(max_minutes * 60))
    cfg = load_config("train", overrides + [f"run_dir={run_dir}", "resume=null", f"trainer.max_time=00:{limit}"])
    start = time.time()
    run.train(cfg)
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        raise RuntimeError(f"training wrote no checkpoint in {run_dir / 'checkpoints'}")
    return time.time() - start


def evaluate(overrides: list[str], run_dir: Path, ckpt: Path | None) -> dict[str, Any]:
    """``grounding eval`` of ``ckpt`` (None: the initial weights of the seed) on the val split."""
    from grounding.engine import run
    from grounding.engine.config import load_config

    _fresh(run_dir)
    extra = [f"run_dir={run_dir}", "split=val", f"ckpt_path={ckpt}" if ckpt else "ckpt_path=null",
             "trainer.enable_model_summary=false"]
    return run.evaluate(load_config("eval", overrides + extra))


def write_summary(out: Path, result: dict[str, Any], reference: dict[str, Any], train_seconds: float,
                  total_seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    """``<out>/metrics.json``: the trained model's groups at the top level (the layout of ``grounding eval``),
    the reference rows, the bar of the issue and the timings."""
    from grounding.engine.records import write_json

    metrics = result["metrics"]
    multiple = metrics.get("multiple", {}).get("acc@0.5", float("nan"))
    random_multiple = reference["random_class_instance"].get("multiple", {}).get("acc@0.5", float("nan"))
    summary = {**metrics,
               "definitions": result.get("definitions", {}),
               "reference_rows": reference,
               "bar": {"multiple_acc@0.5": multiple, "random_class_multiple_acc@0.5": random_multiple,
                       "passed": bool(multiple >= 40.0 and multiple >= random_multiple + 10.0),
                       "rule": "multiple Acc@0.5 >= 40 and >= the random-class row + 10 points"},
               "train_seconds": round(train_seconds, 1), "total_seconds": round(total_seconds, 1),
               "max_minutes": args.max_minutes, "checkpoint": result.get("checkpoint"),
               "experiment": EXPERIMENT, "overrides": list(args.overrides)}
    write_json(out / "metrics.json", summary)
    return summary


def format_table(summary: dict[str, Any]) -> str:
    """Rows: the two references and the trained model; columns: mIoU / Acc@0.25 / Acc@0.5 per group."""
    rows = [("random instance of named class", summary["reference_rows"]["random_class_instance"]),
            ("RG-SAN before training", summary["reference_rows"]["untrained"]),
            ("RG-SAN trained", {g: summary[g] for g in GROUPS if g in summary})]
    head = f"{'synthetic val (percent)':<32}" + "".join(f"{g + ' ' + c:>18}" for g in GROUPS for c in COLUMNS)
    lines = [head]
    for name, m in rows:
        cells = "".join(f"{m.get(g, {}).get(c, float('nan')):>18.1f}" for g in GROUPS for c in COLUMNS)
        lines.append(f"{name:<32}" + cells)
    counts = ", ".join(f"{g} {int(summary[g]['count'])}" for g in GROUPS if g in summary)
    bar = summary["bar"]
    lines += [f"descriptions: {counts}; Acc@X = IoU > X (strict), IoU over points (spec definitions in metrics.json)",
              f"bar: multiple Acc@0.5 {bar['multiple_acc@0.5']:.1f} vs random-class "
              f"{bar['random_class_multiple_acc@0.5']:.1f}: {'PASSED' if bar['passed'] else 'NOT MET'} "
              f"(>= 40 and >= random + 10); trained {summary['train_seconds']:.0f} s"]
    return "\n".join(lines)


def pick_examples(predictions: list[Any], count: int) -> list[Any]:
    """Up to ``count`` predictions, alternating hits (IoU > 0.5) and misses, each from a new scene while
    unused scenes remain; file order otherwise (deterministic)."""
    pools = [[p for p in predictions if (p.record.get("iou") or 0.0) > 0.5],
             [p for p in predictions if (p.record.get("iou") or 0.0) <= 0.5]]
    chosen: list[Any] = []
    scenes: set[str] = set()
    turn = 0
    while len(chosen) < count and any(pools):
        pool = pools[turn % 2] or pools[(turn + 1) % 2]
        turn += 1
        pick = next((p for p in pool if p.record["scene_id"] not in scenes), pool[0])
        pool.remove(pick)
        chosen.append(pick)
        scenes.add(pick.record["scene_id"])
    return chosen


def render_examples(predictions: Path, scenes_dir: Path, out_dir: Path, count: int) -> list[Path]:
    from pointcloud.render_predictions import read_predictions, render_predictions

    if count <= 0:
        return []
    _fresh(out_dir)
    chosen = pick_examples(read_predictions(predictions), count)
    paths = render_predictions(predictions, scenes_dir, out_dir, preds=chosen)
    (out_dir / "examples.json").write_text(json.dumps(
        [{"png": str(p.relative_to(out_dir)), "sample_id": c.record["sample_id"], "iou": c.record.get("iou"),
          "description": c.record["description"]} for p, c in zip(paths, chosen)], indent=2) + "\n")
    return paths

