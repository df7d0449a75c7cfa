"""Composing hydra configs from the command line or from Python (tests, notebooks).

The toolkit uses hydra's compose API rather than ``@hydra.main`` so that ``grounding train`` and
``grounding eval`` are ordinary subcommands; the run directory is therefore chosen here, not by hydra.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict

from grounding import config_dir

RUN_DIR_ENV = "GROUNDING_RUN_DIR"

if not OmegaConf.has_resolver("now"):
    # hydra registers ``now`` only inside @hydra.main apps; configs use it for run directories.
    OmegaConf.register_new_resolver("now", lambda fmt: datetime.now().strftime(fmt), use_cache=True)


def load_config(name: str, overrides: Sequence[str] = (), extra_dirs: Sequence[str | Path] = ()) -> DictConfig:
    """Compose ``configs/<name>.yaml`` with hydra overrides.

    Args:
        name: ``"train"`` or ``"eval"``.
        overrides: hydra override strings, e.g. ``["experiment=rgsan_synthetic", "trainer.max_epochs=3"]``.
        extra_dirs: more config folders searched after the toolkit's own (for user experiments).

    Returns:
        The composed config with the run directory fixed in ``run_dir``.
    """
    overrides = list(overrides)
    if extra_dirs:
        paths = ",".join(f"file://{Path(d).resolve()}" for d in extra_dirs)
        overrides.append(f"hydra.searchpath=[{paths}]")
    with initialize_config_dir(config_dir=str(config_dir()), version_base=None, job_name=f"grounding_{name}"):
        cfg = compose(config_name=name, overrides=overrides)
    fix_run_dir(cfg)
    return cfg


def fix_run_dir(cfg: DictConfig) -> Path:
    """Resolve ``cfg.run_dir`` once and share it with DDP child processes.

    Lightning starts ranks > 0 by re-running the same command; a timestamped run directory would
    differ between ranks, so rank 0 exports the resolved path and the children read it back.
    """
    child = int(os.environ.get("LOCAL_RANK", "0")) > 0 or int(os.environ.get("NODE_RANK", "0")) > 0
    run_dir = os.environ.get(RUN_DIR_ENV) if child else None
    if run_dir is None:
        run_dir = str(Path(OmegaConf.select(cfg, "run_dir")).resolve())
        os.environ[RUN_DIR_ENV] = run_dir
    with open_dict(cfg):
        cfg.run_dir = run_dir
    return Path(run_dir)
