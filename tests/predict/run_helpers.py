"""Write a training run's files (config.yaml and a Lightning-style last.ckpt) for an in-memory model."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from grounding.engine import GroundingTask


def save_run(cfg: DictConfig, model: nn.Module, postprocess: object, run_dir: Path) -> Path:
    """Save ``model`` as ``run_dir/checkpoints/last.ckpt`` the way Lightning would, plus the resolved config.

    Returns the checkpoint path. The frozen text encoder is left out by ``GroundingTask.on_save_checkpoint``.
    """
    task = GroundingTask(model, instantiate(cfg.model.criterion), postprocess, instantiate(cfg.model.evaluator),
                         optimizer=torch.optim.AdamW)
    checkpoint = {"state_dict": task.state_dict(), "epoch": 0, "global_step": 0}
    task.on_save_checkpoint(checkpoint)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    torch.save(checkpoint, ckpt)
    return ckpt
