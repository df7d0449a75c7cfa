"""Every config of every group composes, and every `_target_` in it names an importable object."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from grounding import config_dir
from grounding.engine.config import load_config

CONFIGS = config_dir()
GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir())
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONFIGS / g).glob("*.yaml"))]


def _targets(node, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            value = node._get_node(key)
            if key == "_target_":
                found.append((path, str(node[key])))
            elif isinstance(value, (DictConfig, ListConfig)):
                found.extend(_targets(value, f"{path}.{key}"))
    elif isinstance(node, ListConfig):
        for i, value in enumerate(node):
            if isinstance(value, (DictConfig, ListConfig)):
                found.extend(_targets(value, f"{path}[{i}]"))
    return found


def test_the_documented_groups_exist() -> None:
    assert {"paths", "trainer", "text_encoder", "compress", "experiment"} <= set(GROUPS)


@pytest.mark.parametrize("name", ["train", "eval"])
def test_entry_points_compose(name: str, tmp_path: Path) -> None:
    cfg = load_config(name, [f"run_dir={tmp_path}"])
    assert cfg.run_dir == str(tmp_path.resolve())
    for where, target in _targets(cfg):
        assert get_object(target) is not None, f"{where}: {target}"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}/{o}" for g, o in OPTIONS])
def test_every_group_option_composes(group: str, option: str, tmp_path: Path) -> None:
    if group == "experiment":
        overrides = [f"experiment={option}"]
    elif group in ("data", "model"):
        pytest.skip(f"{group}/{option} is composed through the experiments that use it")
    else:
        overrides = [f"{group}={option}"]
    cfg = load_config("train", overrides + [f"run_dir={tmp_path}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert resolved is not None
    for where, target in _targets(cfg):
        assert get_object(target) is not None, f"{group}/{option} {where}: {target}"
