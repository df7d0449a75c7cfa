"""``train`` and ``evaluate``: build everything from a composed config and run Lightning.

Run directory layout (``cfg.run_dir``)::

    config.yaml            the resolved config of this run
    checkpoints/last.ckpt  written every epoch; ``resume=auto`` continues from it
    checkpoints/*.ckpt     best checkpoints by ``checkpoint.monitor`` when set
    tb/, csv/              TensorBoard and CSV logs
    metrics.json           (eval) every metric with its exact definition
    predictions.jsonl      (eval) one record per sample
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from grounding.engine.records import PredictionWriter, write_json

log = logging.getLogger(__name__)


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision: auto`` → mixed fp16 on CUDA, full fp32 elsewhere (spconv has no bf16 kernels)."""
    if cfg.trainer.get("precision", "auto") != "auto":
        return
    accel = cfg.trainer.get("accelerator", "auto")
    cuda = torch.cuda.is_available() and accel in ("auto", "gpu", "cuda")
    cfg.trainer.precision = "16-mixed" if cuda else "32-true"


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] = ()) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the configured callbacks and loggers."""
    resolve_precision(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    loggers = [instantiate(c) for c in (cfg.get("loggers") or {}).values() if c is not None]
    return instantiate(cfg.trainer, callbacks=callbacks + list(extra_callbacks), logger=loggers or False)


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Seed, then instantiate the task module and the data module."""
    if cfg.get("task") is None or cfg.get("data") is None:
        raise ValueError("no task is configured: choose one with experiment=<method>_<dataset> "
                         f"(see {Path(__file__).resolve().parents[2] / 'configs' / 'experiment'})")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task)
    return task, datamodule


def _checkpoint_to_resume(cfg: DictConfig, run_dir: Path) -> str | None:
    resume = cfg.get("resume")
    if resume in (None, False, "none", "null"):
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    path = Path(str(resume))
    if not path.is_file():
        raise FileNotFoundError(f"resume checkpoint {path} does not exist")
    return str(path)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured task; returns the last logged metrics (floats)."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    task, datamodule = build(cfg)
    trainer = build_trainer(cfg)
    if trainer.is_global_zero:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    ckpt = _checkpoint_to_resume(cfg, run_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    return {k: float(v) for k, v in trainer.callback_metrics.items()}


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on ``cfg.split``; writes ``metrics.json`` and ``predictions.jsonl``."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = cfg.get("split", "val")
    task, datamodule = build(cfg)
    # Evaluate on the requested split through Lightning's test loop (which writes the records).
    datamodule.datasets["test"] = datamodule.datasets.get(split)
    trainer = build_trainer(cfg, extra_callbacks=[PredictionWriter(run_dir)])
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (set ckpt_path=<file>)")
    start = time.time()
    trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    metrics = dict(task.last_test_metrics)
    result = {
        "split": split,
        "checkpoint": str(ckpt) if ckpt else None,
        "metrics": metrics,
        "definitions": task.test_metric.definitions() if hasattr(task.test_metric, "definitions") else {},
        "world_size": trainer.world_size,
        "seconds": round(time.time() - start, 3),
    }
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return result


def format_metrics(result: dict[str, Any]) -> str:
    """A table of ``name  value  definition`` lines for the terminal."""
    defs = result.get("definitions", {})
    lines = []
    for name, value in sorted(result["metrics"].items()):
        base = name.split("/")[-1]
        lines.append(f"{name:<28} {value:>10.4f}   {defs.get(base, '')}")
    return "\n".join(lines)
