"""``grounding eval split=train`` scores the training split with the evaluation pipeline, never ``data.train``."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from toy_task import TOY_CONFIGS

from datasets.refimage import ReferImageDataset
from grounding.engine import run
from grounding.engine.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _toy_eval(tmp_path: Path, extra: list[str]) -> dict:
    train_dir = tmp_path / "train"
    if not (train_dir / "checkpoints" / "last.ckpt").is_file():
        cfg = load_config("train", ["experiment=toy", f"run_dir={train_dir}", "trainer.max_epochs=1",
                                    "trainer.enable_progress_bar=false"], extra_dirs=[TOY_CONFIGS])
        run.train(cfg)
    cfg = load_config("eval", ["experiment=toy", f"run_dir={tmp_path / 'eval'}", "trainer.enable_progress_bar=false",
                               f"ckpt_path={train_dir / 'checkpoints' / 'last.ckpt'}", *extra],
                      extra_dirs=[TOY_CONFIGS])
    return run.evaluate(cfg)


def test_train_split_is_data_val_with_the_configured_fields(tmp_path: Path) -> None:
    # the toy train split has 24 samples (seed 0), val 11 (seed 1): eval_splits.train turns val into train
    result = _toy_eval(tmp_path, ["split=train", "+data.eval_splits={train: {size: 24, seed: 0}}"])
    assert result["split"] == "train"
    assert result["samples"]["expected"] == result["samples"]["evaluated"] == 24
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["metrics"]["overall"]["count"] == 24
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(r["sample_id"] for r in records) == [f"s0_{i:04d}" for i in range(24)]


def test_a_split_without_an_eval_entry_is_refused_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split='train'.*data\.eval_splits\.train.*augments"):
        _toy_eval(tmp_path, ["split=train"])
    with pytest.raises(ValueError, match=r"split='testB'"):
        _toy_eval(tmp_path, ["split=testB"])


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONFIGS / "data").glob("*.yaml")))
def test_every_data_config_can_evaluate_its_train_split(data: str) -> None:
    cfg = load_config("eval", [f"data={data}", "split=train", "run_dir=/tmp/unused"])
    entry = cfg.data.eval_splits.train
    assert entry, data
    for key, value in entry.items():  # each field names the train split's source, as data.train does
        assert key in cfg.data.val and key in cfg.data.train and value == cfg.data.train[key], (data, key)
        assert value != cfg.data.val[key], (data, key)


def test_dit_synthetic_train_split_is_every_expression_unaugmented_and_without_the_curriculum(
        synthetic2d_tiny: Path) -> None:
    cfg = load_config("eval", ["experiment=dit_synthetic", f"data.root={synthetic2d_tiny}", "split=train",
                               "run_dir=/tmp/unused"])
    assert "curriculum" in cfg.data.train._target_  # what training draws from
    ds = run.evaluation_dataset(cfg, None, "train")  # the data module is only read for val and test
    assert type(ds) is ReferImageDataset and ds.unit == "sentence" and not ds.transform.train
    with open(synthetic2d_tiny / "synthetic2d" / "refs(unc).p", "rb") as f:
        refs = pickle.load(f)
    train_sentences = sum(len(r["sentences"]) for r in refs if r["split"] == "train")
    assert len(ds) == train_sentences > 0
