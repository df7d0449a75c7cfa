"""``train`` and ``evaluate``: build everything from a composed config and run Lightning.

Run directory layout (``cfg.run_dir``)::

    config.yaml            the resolved config of this run
    checkpoints/last.ckpt  written every epoch; ``resume=auto`` continues from it
                           (``+callbacks.checkpoint.every_n_train_steps=N``: every N steps instead)
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
from lightning.fabric.plugins import CheckpointIO
from omegaconf import DictConfig, OmegaConf

from grounding.engine.checkpoint_io import AtomicCheckpointIO, remove_stale_temporaries
from grounding.engine.coverage import coverage_problem
from grounding.engine.records import PredictionWriter, write_json
from grounding.engine.rng import RngStateCallback

log = logging.getLogger(__name__)


def resolve_precision(cfg: DictConfig) -> None:
    """``trainer.precision: auto`` → mixed fp16 on CUDA, full fp32 elsewhere (spconv has no bf16 kernels)."""
    if cfg.trainer.get("precision", "auto") != "auto":
        return
    accel = cfg.trainer.get("accelerator", "auto")
    cuda = torch.cuda.is_available() and accel in ("auto", "gpu", "cuda")
    cfg.trainer.precision = "16-mixed" if cuda else "32-true"


def build_trainer(cfg: DictConfig, extra_callbacks: list[Any] = ()) -> L.Trainer:
    """Instantiate ``cfg.trainer`` with the configured callbacks and loggers.

    Every trainer also gets what crash-safe training needs, whatever the config says: checkpoint files
    written atomically (:class:`AtomicCheckpointIO`, unless ``trainer.plugins`` brings its own CheckpointIO)
    and the random generators' states in every checkpoint (:class:`RngStateCallback`).
    """
    resolve_precision(cfg)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    callbacks += [*extra_callbacks, RngStateCallback()]
    loggers = [instantiate(c) for c in (cfg.get("loggers") or {}).values() if c is not None]
    configured = cfg.trainer.get("plugins")
    plugins = list(instantiate(configured)) if configured else []
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins)


def build(cfg: DictConfig) -> tuple[L.LightningModule, L.LightningDataModule]:
    """Seed, then instantiate the task module and the data module."""
    if cfg.get("task") is None or cfg.get("data") is None:
        raise ValueError("no task is configured: choose one with experiment=<method>_<dataset> "
                         f"(see {Path(__file__).resolve().parents[2] / 'configs' / 'experiment'})")
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    task = instantiate(cfg.task)
    # Constructors never load checkpoints (ARCHITECTURE.md); models that start from pretrained weights
    # (e.g. an SPFormer backbone) load them here, with a strict key report.
    if hasattr(task.model, "load_pretrained"):
        task.model.load_pretrained()
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
        for callback in trainer.checkpoint_callbacks:  # what a killed save left behind (never a checkpoint)
            if getattr(callback, "dirpath", None):
                remove_stale_temporaries(callback.dirpath)
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
    datamodule.datasets["test"] = evaluation_dataset(cfg, datamodule, split)
    writer = PredictionWriter(run_dir)
    trainer = build_trainer(cfg, extra_callbacks=[writer])
    ckpt = cfg.get("ckpt_path")
    if ckpt is not None and not Path(ckpt).is_file():
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist (set ckpt_path=<file>)")
    start = time.time()
    trainer.test(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    metrics = nest_metrics(task.last_test_metrics)
    result = {
        "split": split,
        "checkpoint": str(ckpt) if ckpt else None,
        "metrics": metrics,
        "definitions": task.test_metric.definitions() if hasattr(task.test_metric, "definitions") else {},
        "world_size": trainer.world_size,
        "seconds": round(time.time() - start, 3),
    }
    if writer.coverage is not None:  # rank 0: every sample of the split evaluated exactly once?
        result["samples"] = writer.coverage
        problem = coverage_problem(writer.coverage)
        if problem:
            log.warning("evaluation of split %r: %s (metrics.json: samples)", split, problem)
    if trainer.is_global_zero:
        write_json(run_dir / "metrics.json", result)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return result


def evaluation_dataset(cfg: DictConfig, datamodule: L.LightningDataModule | None, split: str) -> Any:
    """The dataset ``grounding eval split=<split>`` scores, always built with the evaluation pipeline.

    ``val`` and ``test`` are the data module's own. Any other split needs an entry in ``data.eval_splits``: the
    fields that turn ``data.val`` into that split (``{split: train}`` for the refer layout, ``{annotations: ...}``
    for the 3D sources), so that ``split=train`` scores every training sample once, unaugmented, with the
    evaluation transform and batching. ``data.train`` itself is never evaluated: its pipeline draws random
    augmentations, subsamples points and may mix in curriculum items, so its scores would not be reproducible
    and would not be of the training split.
    """
    entries = cfg.data.get("eval_splits") or {}
    if split in entries:
        val = cfg.data.get("val")
        if val is None:
            raise ValueError(f"data.eval_splits.{split} modifies data.val, but no data.val is configured")
        fields = OmegaConf.to_container(entries[split], resolve=True)
        log.info("evaluating split %r: data.val with %s", split, fields)
        return instantiate(OmegaConf.merge(OmegaConf.to_container(val, resolve=True), fields))
    if split in ("val", "test"):
        dataset = None if datamodule is None else datamodule.datasets.get(split)
        if dataset is None:
            raise ValueError(f"no {split!r} dataset is configured (data.{split} is null)")
        return dataset
    known = ["val", "test", *entries]
    raise ValueError(f"split={split!r} cannot be evaluated with this data config: it evaluates {known}. "
                     f"Add data.eval_splits.{split}: the fields of data.val that select that split (e.g. "
                     "{split: train} or {annotations: <file>}); data.train is never evaluated, its pipeline "
                     "augments")


def nest_metrics(flat: dict[str, float]) -> dict[str, Any]:
    """``{"overall/mIoU": v}`` -> ``{"overall": {"miou": v}}`` (metrics.json layout; names lower-cased).

    Names without a group stay at the top level.
    """
    out: dict[str, Any] = {}
    for key, value in flat.items():
        group, _, name = key.rpartition("/")
        (out.setdefault(group, {}) if group else out)[name.lower()] = value
    return out


def format_metrics(result: dict[str, Any]) -> str:
    """A table for the terminal: one row per group, one column per metric, then each metric's definition.

    Groups that share none of the first group's metrics (e.g. the 3D-GRES ``zero_target`` / ``targeted``
    summaries) are printed below the table as ``group: name value`` lines instead of rows of NaN.
    """
    metrics = result["metrics"]
    groups = {g: v for g, v in metrics.items() if isinstance(v, dict)}
    if not groups:
        return ""
    names = list(next(iter(groups.values())).keys())
    names = [n for n in names if n != "count"] + (["count"] if "count" in names else [])
    table_names = set(names) - {"count"}
    rows = {g: v for g, v in groups.items() if table_names & set(v) or not table_names}
    extras = {g: v for g, v in groups.items() if g not in rows}
    lines = [f"{'group':<12}" + "".join(f"{n:>11}" for n in names)]
    for group, values in rows.items():
        cells = "".join(f"{values.get(n, float('nan')):>11.0f}" if n == "count"
                        else f"{values.get(n, float('nan')):>11.2f}" for n in names)
        lines.append(f"{group:<12}" + cells)
    if extras:
        lines.append("")
        for group, values in extras.items():
            lines.append(f"{group}: " + ", ".join(f"{n} {v:.2f}" if n != "count" else f"{n} {v:.0f}"
                                                  for n, v in values.items()))
    extra_names = [n for v in extras.values() for n in v if n not in names]
    defs = {k.lower(): v for k, v in result.get("definitions", {}).items()}
    lines += ["", "definitions:"] + [f"  {n}: {defs[n]}" for n in dict.fromkeys(names + extra_names) if n in defs]
    samples = result.get("samples")
    if samples:
        problem = coverage_problem(samples)
        lines += ["", f"samples: {samples['evaluated']} of {samples['expected']} evaluated"
                  + (f"; NOT EVALUATED OR COUNTED TWICE: {problem}" if problem else " (each exactly once)")]
    return "\n".join(lines)
