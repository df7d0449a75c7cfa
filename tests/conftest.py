"""Shared test fixtures: the location of ../shared/realdata and the gpu marker's skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata"


@pytest.fixture(scope="session")
def realdata() -> Path:
    """``../shared/realdata`` (real samples under non-commercial licences); skip when absent."""
    if not REALDATA.is_dir():
        pytest.skip(f"real data fixtures not found at {REALDATA}")
    return REALDATA


@pytest.fixture(scope="session")
def synthetic2d_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated RefCOCO-layout folder (``synthetic2d`` preset ``tiny``, seed 0), shared read-only by the tests."""
    from datasets.synthetic.images import generate_synthetic2d

    out = tmp_path_factory.mktemp("synthetic2d_tiny")
    generate_synthetic2d(out, preset="tiny", seed=0)
    return out


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="gpu test: no CUDA device on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
