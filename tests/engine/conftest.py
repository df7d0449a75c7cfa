"""Fixtures of the engine tests: the test-only toy task and its configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

if str(HERE) not in sys.path:  # hydra resolves `toy_task.*` targets in this process
    sys.path.insert(0, str(HERE))


@pytest.fixture
def toy_env() -> dict[str, str]:
    """Environment for `grounding` subprocesses that must import the toy task."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("GROUNDING_RUN_DIR", None)
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env
