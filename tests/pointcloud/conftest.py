"""Fixtures of the 3D model tests: the tiny box scenes on disk and the text encoder."""

from __future__ import annotations

from pathlib import Path

import pytest
from box_scenes import SCENE_A, SCENE_B, make_scene

from grounding.text import TextEncoder


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the two prepared box scenes (SCENE_A, SCENE_B)."""
    folder = tmp_path_factory.mktemp("box_scenes")
    make_scene(SCENE_A, 0).save(folder)
    make_scene(SCENE_B, 1).save(folder)
    return folder


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()  # all-MiniLM-L6-v2 from its PyPI package: offline, frozen
