"""Evaluation never loses a sample silently: the merged records are checked against the split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from toy_task import TOY_CONFIGS

from grounding.engine import run
from grounding.engine.config import load_config
from grounding.engine.coverage import check_coverage, coverage_problem


class _Split:
    def __init__(self, ids: list[str] | None, size: int = 0) -> None:
        self.ids, self.size = ids, size

    def eval_sample_ids(self) -> list[str] | None:
        return self.ids

    def __len__(self) -> int:
        return self.size


def test_coverage_by_ids_counts_skipped_duplicated_and_ignores_extra_records() -> None:
    split = _Split(["a", "b", "c", "d"])
    records = [{"sample_id": "a"}, {"sample_id": "c"}, {"sample_id": "c"}, {"sample_id": "img/1"}]
    report = check_coverage(split, records)
    assert (report["expected"], report["evaluated"], report["skipped"], report["duplicated"]) == (4, 2, 2, 1)
    assert report["skipped_ids"] == ["b", "d"] and report["duplicated_ids"] == ["c"]
    problem = coverage_problem(report)
    assert "2 of 4 samples were not evaluated (first: b, d)" in problem and "1 samples were evaluated more" in problem
    full = check_coverage(split, [{"sample_id": s} for s in "dcba"])
    assert full["skipped"] == full["duplicated"] == 0 and coverage_problem(full) is None


def test_coverage_by_count_when_the_split_lists_no_ids() -> None:
    report = check_coverage(_Split(None, size=5), [{"sample_id": "x"}] * 3)
    assert (report["by"], report["expected"], report["evaluated"], report["skipped"]) == ("count", 5, 3, 2)
    assert "2 of 5 samples were not evaluated" in coverage_problem(report)


def _evaluate(tmp_path: Path, extra: list[str]) -> tuple[dict, str]:
    train_dir = tmp_path / "train"
    if not (train_dir / "checkpoints" / "last.ckpt").is_file():
        cfg = load_config("train", ["experiment=toy", f"run_dir={train_dir}", "trainer.max_epochs=1",
                                    "trainer.enable_progress_bar=false"], extra_dirs=[TOY_CONFIGS])
        run.train(cfg)
    eval_dir = tmp_path / ("eval" + str(len(extra)))
    cfg = load_config("eval", ["experiment=toy", f"run_dir={eval_dir}", "trainer.enable_progress_bar=false",
                               f"ckpt_path={train_dir / 'checkpoints' / 'last.ckpt'}", *extra],
                      extra_dirs=[TOY_CONFIGS])
    result = run.evaluate(cfg)
    saved = json.loads((eval_dir / "metrics.json").read_text())
    assert saved["samples"] == result["samples"]
    return saved, run.format_metrics(result)


def test_eval_reports_samples_a_loader_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    saved, table = _evaluate(tmp_path, [])
    assert saved["samples"]["expected"] == saved["samples"]["evaluated"] == 11
    assert saved["samples"]["skipped"] == 0 and "samples: 11 of 11 evaluated (each exactly once)" in table

    # a collate that skips unreadable items (a common loader pattern) loses samples 3 and 7 of the val split
    with caplog.at_level(logging.WARNING, logger="grounding.engine.run"):
        saved, table = _evaluate(tmp_path, ["+data.val.unreadable=[3,7]"])
    samples = saved["samples"]
    assert (samples["expected"], samples["evaluated"], samples["skipped"]) == (11, 9, 2)
    assert samples["skipped_ids"] == ["s1_0003", "s1_0007"]
    assert saved["metrics"]["overall"]["count"] == 9  # the metric saw 9: the report is what tells the user
    assert "NOT EVALUATED" in table and "s1_0003, s1_0007" in table
    assert any("2 of 11 samples were not evaluated" in r.getMessage() for r in caplog.records)
