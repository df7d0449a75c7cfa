"""Box retrieval through the engine on the tiny generated set: the hydra configs build, ``train`` runs a few steps,
``evaluate`` writes metrics.json (REC and COCO AP), predictions.jsonl and the COCO results file that pycocotools
scores to the same AP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounding.metrics.boxes import coco_box_eval

SMALL = ["model.net.backbone.img_size=64", "model.net.backbone.embed_dim=32", "model.net.backbone.depth=1",
         "model.net.backbone.num_heads=2", "model.net.backbone.out_chans=32", "model.net.pyramid_dim=16",
         "model.net.head.d_model=32", "model.net.head.num_heads=2", "model.net.head.ffn_dim=64",
         "data.source.canvas=64", "data.batch_size=2", "data.eval_batch_size=2", "scheduler.warmup_steps=1"]


@pytest.fixture(scope="module")
def tiny(synthetic2d_tiny: Path) -> Path:
    return synthetic2d_tiny  # tests/conftest.py: read-only


def test_retrieval_configs_build(tiny: Path) -> None:
    from hydra.utils import instantiate

    from grounding.engine.config import load_config

    cfg = load_config("train", ["experiment=retrieval_refcoco", f"data.root={tiny}", "data.source.dataset=synthetic2d",
                                "data.source.split_by=unc", "data.source.canvas=64"])
    assert cfg.model.net._target_ == "grounding.retrieval.BoxRetriever" and cfg.model.net.freeze_backbone
    assert cfg.model.evaluator.instances == f"{tiny}/synthetic2d/instances.json"
    cfg = load_config("train", ["experiment=retrieval_synthetic", f"data.root={tiny}"])
    dm = instantiate(cfg.data)
    train, val = dm.datasets["train"], dm.datasets["val"]
    assert train.transform.size == 128 and train.transform.train and not val.transform.train
    assert train.category_queries == "all" and val.category_queries == "all" and train.image_cache > 0


def test_train_then_evaluate(tiny: Path, tmp_path: Path) -> None:
    from grounding.engine import run
    from grounding.engine.config import load_config

    train_dir = tmp_path / "train"
    cfg = load_config("train", ["experiment=retrieval_synthetic", f"data.root={tiny}", f"run_dir={train_dir}",
                                "trainer.max_steps=2", "trainer.max_epochs=1", "loggers.tensorboard=null", *SMALL])
    run.train(cfg)
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    eval_dir = tmp_path / "eval"
    cfg = load_config("eval", ["experiment=retrieval_synthetic", f"data.root={tiny}", f"run_dir={eval_dir}",
                               f"ckpt_path={ckpt}", *SMALL])
    result = run.evaluate(cfg)
    overall = result["metrics"]["overall"]
    records = [json.loads(line) for line in (eval_dir / "predictions.jsonl").read_text().splitlines()]
    expressions = [r for r in records if "bbox" in r]
    assert overall["count"] == len(expressions) > 0 and overall["upperbound@0.5"] == 100.0
    assert overall["acc@0.5"] == pytest.approx(100 * sum(r["iou"] >= 0.5 for r in expressions) / len(expressions))
    assert "Acc@0.5" in result["definitions"] and "AP" in result["definitions"]
    # the COCO results file, scored again by pycocotools, gives the reported AP
    results = json.loads((eval_dir / "coco_results.json").read_text())
    images = sorted({r["image_id"] for r in records if "detections" in r})
    assert results and {r["image_id"] for r in results} <= set(images)
    stats = coco_box_eval(tiny / "synthetic2d" / "instances.json", results, img_ids=images)
    assert overall["ap"] == pytest.approx(100 * stats["AP"], abs=1e-6)
