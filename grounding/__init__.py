"""Shared core of the grounding toolkit: text side, tokens and compressors, engine, metrics, CLI.

Importing this package is cheap: heavy modules (torch models, Lightning, spaCy) are imported by
the submodules that need them, never here.
"""

from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"


def config_dir() -> Path:
    """Directory of the hydra configs (``configs/`` at the repository root).

    ``GROUNDING_CONFIG_DIR`` overrides it, e.g. for an installed copy outside the clone.
    """
    env = os.environ.get("GROUNDING_CONFIG_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "configs"
    if not (path / "train.yaml").is_file():
        raise FileNotFoundError(
            f"hydra configs not found at {path} (expected {path / 'train.yaml'}); "
            "set GROUNDING_CONFIG_DIR to the repository's configs/ folder"
        )
    return path
