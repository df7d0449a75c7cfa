"""The random-instance-of-the-named-class reference row against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from datasets.records import ReferRecord
from datasets.reference3d import random_class_instance_row
from datasets.scannet.labels import LabelRow
from datasets.scannet.scene import PreparedScene

# raw category -> ScanRefer class through nyu40class (chair and table are ScanRefer classes; "plant" is others)
LABELS = {name: LabelRow(raw_category=name, nyu40id=nyu, nyu40class=cls)
          for name, nyu, cls in [("chair", 5, "chair"), ("table", 7, "table"), ("plant", 40, "otherprop")]}


def scene(tmp: Path) -> Path:
    """Instances: chairs 1, 2, 3 (10 points each), table 4 (20 points), plant 5 (5 points), unlabelled -1 (5)."""
    instance = np.repeat([1, 2, 3, 4, 5, -1], [10, 10, 10, 20, 5, 5])
    n = len(instance)
    PreparedScene("scene0100_00", np.zeros((n, 3), np.float32), np.zeros((n, 3), np.uint8), np.arange(n),
                  np.zeros(n, np.int64), instance,
                  meta={"instance_labels": {"1": "chair", "2": "chair", "3": "chair", "4": "table", "5": "plant"}}
                  ).save(tmp)
    return tmp


def rec(obj: int, name: str, unique: bool) -> ReferRecord:
    return ReferRecord("scene0100_00", 0, (obj,), name, f"the {name}", "scanrefer", unique=unique)


def test_expected_values_by_hand(tmp_path: Path) -> None:
    records = [rec(2, "chair", False), rec(4, "table", True), rec(5, "plant", True)]
    row = random_class_instance_row(records, scene(tmp_path), LABELS)
    # chair: 3 candidates, one is the target (IoU 1 - tiny eps), two are disjoint (IoU 0) -> 1/3
    assert row["multiple"]["miou"] == pytest.approx(100 / 3, abs=1e-4)
    assert row["multiple"]["acc@0.5"] == pytest.approx(100 / 3)
    assert row["multiple"]["acc@0.25"] == pytest.approx(100 / 3)
    # oIoU: E[I] = 10/3, E[U] = (10 + 20 + 20) / 3 -> 10 / 50
    assert row["multiple"]["oiou"] == pytest.approx(20.0)
    # table: one candidate = the target; plant maps to "others", the only other-class instance -> also exact
    assert row["unique"]["acc@0.5"] == pytest.approx(100.0)
    assert row["unique"]["count"] == 2 and row["overall"]["count"] == 3
    assert row["overall"]["acc@0.5"] == pytest.approx(100 * (1 / 3 + 1 + 1) / 3)


def test_named_class_absent_scores_zero(tmp_path: Path) -> None:
    labels = dict(LABELS, sofa=LabelRow(raw_category="sofa", nyu40id=6, nyu40class="sofa"))
    row = random_class_instance_row([rec(1, "sofa", True)], scene(tmp_path), labels)
    assert row["overall"]["miou"] == 0.0 and row["overall"]["acc@0.25"] == 0.0


def test_missing_instance_labels_is_a_clear_error(tmp_path: Path) -> None:
    n = 4
    PreparedScene("scene0100_00", np.zeros((n, 3), np.float32), np.zeros((n, 3), np.uint8), np.arange(n),
                  np.zeros(n, np.int64), np.ones(n, np.int64)).save(tmp_path)
    with pytest.raises(Exception, match="instance_labels"):
        random_class_instance_row([rec(1, "chair", True)], tmp_path, LABELS)
