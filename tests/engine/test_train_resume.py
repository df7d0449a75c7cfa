"""The engine trains the toy task on CPU, checkpoints, resumes, and evaluates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from toy_task import TOY_CONFIGS

from grounding.engine import run
from grounding.engine.config import load_config


def _epoch_losses(run_dir: Path) -> dict[int, float]:
    rows = [r for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")) for r in csv.DictReader(open(f))]
    return {int(r["epoch"]): float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")}


def test_train_checkpoint_resume_eval(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = ["experiment=toy", f"run_dir={run_dir}", "trainer.enable_progress_bar=false"]
    cfg = load_config("train", common + ["trainer.max_epochs=3"], extra_dirs=[TOY_CONFIGS])
    metrics = run.train(cfg)

    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    assert (run_dir / "config.yaml").is_file()
    assert any((run_dir / "tb").rglob("events.out.tfevents.*")), "TensorBoard logger wrote nothing"
    losses = _epoch_losses(run_dir)
    assert sorted(losses) == [0, 1, 2]
    assert losses[2] < 0.8 * losses[0], f"training loss did not fall: {losses}"
    # weighted and unweighted terms are both logged; the total is their weighted sum
    assert abs(metrics["train/loss_epoch"]
               - (metrics["train/loss_bce_epoch"] + 0.5 * metrics["train/loss_dice_epoch"])) < 1e-4
    assert "val/overall/mIoU" in metrics and "val/unique/mIoU" in metrics
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 2 and state["global_step"] == 3 * 6  # 24 samples / batch 4

    # resume=auto continues from last.ckpt: two more epochs, global step keeps counting
    cfg = load_config("train", common + ["trainer.max_epochs=5"], extra_dirs=[TOY_CONFIGS])
    run.train(cfg)
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 4 and state["global_step"] == 5 * 6
    losses = _epoch_losses(run_dir)  # the first segment's logs survive the resume
    assert sorted(losses) == [0, 1, 2, 3, 4] and losses[4] < losses[0]

    # evaluation of the checkpoint writes metrics with definitions and one record per sample
    eval_dir = tmp_path / "eval"
    cfg = load_config("eval", ["experiment=toy", f"run_dir={eval_dir}", f"ckpt_path={last}",
                               "trainer.enable_progress_bar=false"], extra_dirs=[TOY_CONFIGS])
    result = run.evaluate(cfg)
    saved = json.loads((eval_dir / "metrics.json").read_text())
    assert saved["metrics"] == result["metrics"]
    overall = saved["metrics"]["overall"]
    assert set(saved["metrics"]) == {"overall", "unique", "multiple"}
    assert set(overall) == {"miou", "oiou", "acc@0.25", "acc@0.5", "count"}
    assert overall["count"] == 11 and overall["miou"] > 60.0, overall
    assert saved["metrics"]["unique"]["count"] + saved["metrics"]["multiple"]["count"] == 11
    assert "IoU" in saved["definitions"]["mIoU"] and ">" in saved["definitions"]["Acc@0.5"]
    records = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in records] == [f"s1_{i:04d}" for i in range(11)]
    # per-sample IoUs average to the reported mIoU
    assert sum(r["iou"] for r in records) / 11 * 100 == pytest.approx(overall["miou"], abs=1e-6)


def test_same_seed_same_result(tmp_path: Path) -> None:
    results = []
    for k in range(2):
        cfg = load_config("train", ["experiment=toy", f"run_dir={tmp_path / str(k)}", "trainer.max_epochs=1",
                                    "trainer.enable_progress_bar=false"], extra_dirs=[TOY_CONFIGS])
        results.append(run.train(cfg)["train/loss_epoch"])
    assert results[0] == results[1]


def test_missing_experiment_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config("train", [f"run_dir={tmp_path}"])
    try:
        run.train(cfg)
    except ValueError as e:
        assert "experiment=" in str(e)
    else:
        raise AssertionError("training without an experiment must fail")
