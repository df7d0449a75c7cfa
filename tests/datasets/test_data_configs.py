"""The 3D data configs instantiate into loaders that give real batches (generated `tiny` rooms)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate

from datasets.batch3d import ReferBatch3D
from datasets.scannet.prepare import prepare_scannet
from datasets.synthetic import generate_synthetic
from grounding.engine.config import load_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    out = root / "synthetic3d"
    generate_synthetic(out, preset="tiny", seed=0, progress=False)
    assert not prepare_scannet(out / "raw", out / "scenes", progress=False).failed
    return root


def test_synthetic3d_config_gives_batches(data_dir: Path, tmp_path: Path) -> None:
    cfg = load_config("train", ["data=synthetic3d", f"paths.data_dir={data_dir}", f"run_dir={tmp_path}",
                                "data.num_workers=0"])
    dm = instantiate(cfg.data)
    train = next(iter(dm.train_dataloader()))
    val = next(iter(dm.val_dataloader()))
    assert isinstance(train, ReferBatch3D) and train.num_scenes == 2 and len(train) <= 32
    assert isinstance(val, ReferBatch3D) and val.num_scenes == 1
    assert set(val.eval_groups()) <= {"unique", "multiple"} and "multiple" in val.eval_groups()


def test_scanrefer_config_names_missing_data(tmp_path: Path) -> None:
    cfg = load_config("train", ["data=scanrefer", f"paths.data_dir={tmp_path}", f"run_dir={tmp_path}"])
    with pytest.raises(Exception, match="ScanRefer_filtered_train.json"):
        instantiate(cfg.data)
