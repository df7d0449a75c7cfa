"""The one generic Lightning module: model, criterion, postprocess and evaluator, all injected.

The contract every task follows (ARCHITECTURE.md):
- ``model(batch) -> outputs``: raw tensors, no loss inside;
- ``criterion(outputs, batch) -> {"loss_*": scalar}``: unweighted terms;
- ``postprocess(outputs, batch) -> list[prediction]``: one prediction per sample, in the original
  indexing, each with ``sample_id`` and ``to_record() -> dict`` (JSON-serialisable);
- ``evaluator``: a torchmetrics ``Metric`` with ``update(predictions, batch)``, ``compute()`` and
  ``definitions()``.
Batches are task dataclasses with ``to(device)``, ``__len__`` (samples) and ``sample_ids``.

The module never names a dataset or a model; hydra wires them in.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import Metric

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
NONFINITE_POLICIES = ("stop", "skip")

log = logging.getLogger(__name__)


def nonfinite_terms(terms: Mapping[str, Tensor]) -> list[str]:
    """Names of the loss terms that are NaN or infinite."""
    return [name for name, value in terms.items() if not bool(torch.isfinite(value.detach()).all())]


class GroundingTask(L.LightningModule):
    """Training and evaluation of any task that follows the model / criterion / postprocess split.

    Args:
        model: ``nn.Module`` mapping a batch to an outputs dataclass.
        criterion: module or callable returning a dict of unweighted ``loss_*`` terms.
        postprocess: callable turning outputs into per-sample predictions.
        evaluator: torchmetrics ``Metric`` (see module docstring); cloned for validation and test.
        optimizer: partial taking the trainable parameters (hydra ``_partial_: true``).
        scheduler: optional partial taking the optimizer.
        loss_weights: weight per loss term; a term not listed has weight 1.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        monitor: metric the scheduler (e.g. ReduceLROnPlateau) and checkpoint selection watch.
        on_nonfinite_loss: what a NaN or infinite training loss does. ``"stop"``: raise
            ``FloatingPointError`` naming the global step, the non-finite terms and the samples, before any
            backward pass or optimizer step (so no checkpoint ever holds weights it corrupted); ``"skip"``:
            leave the weights untouched for this batch (no backward, no update), count the step in
            ``train/nonfinite_skipped`` and go on. In data-parallel runs all ranks skip or stop together.
    """

    def __init__(self, model: nn.Module, criterion: Callable[[Any, Any], Mapping[str, Tensor]],
                 postprocess: Callable[[Any, Any], list[Any]], evaluator: Metric,
                 optimizer: OptimizerFactory, scheduler: SchedulerFactory | None = None,
                 loss_weights: Mapping[str, float] | None = None, scheduler_interval: str = "epoch",
                 monitor: str | None = None, on_nonfinite_loss: str = "stop") -> None:
        super().__init__()
        if on_nonfinite_loss not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite_loss must be one of {NONFINITE_POLICIES}, got {on_nonfinite_loss!r}")
        self.model = model
        self.criterion = criterion
        self.postprocess = postprocess
        self.val_metric = evaluator.clone()
        self.test_metric = evaluator.clone()
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss_weights = dict(loss_weights or {})
        self.scheduler_interval = scheduler_interval
        self.monitor = monitor
        self.on_nonfinite_loss = on_nonfinite_loss
        self.nonfinite_skipped = 0  # training steps skipped for a non-finite loss (kept in checkpoints)
        # Filled by test_step; the PredictionWriter callback drains it batch by batch.
        self.pending_records: list[dict[str, Any]] = []
        self.last_test_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ loss
    def weighted_loss(self, terms: Mapping[str, Tensor]) -> Tensor:
        """Σ_k w_k · term_k over the ``loss_*`` terms (weights from config, default 1)."""
        return weighted_loss(terms, self.loss_weights)

    def _log_terms(self, stage: str, terms: Mapping[str, Tensor], loss: Tensor, batch_size: int) -> None:
        on_step = stage == "train"
        for name, value in terms.items():
            w = self.loss_weights.get(name, 1.0)
            self.log(f"{stage}/{name}", value.detach(), on_step=on_step, on_epoch=True,
                     batch_size=batch_size, sync_dist=not on_step)
            self.log(f"{stage}/weighted_{name}", w * value.detach(), on_step=False, on_epoch=True,
                     batch_size=batch_size, sync_dist=not on_step)
        self.log(f"{stage}/loss", loss.detach(), on_step=on_step, on_epoch=True, prog_bar=True,
                 batch_size=batch_size, sync_dist=not on_step)

    # ------------------------------------------------------------------ epochs
    def on_train_epoch_start(self) -> None:
        # Datasets that augment draw their randomness from (seed, epoch, index); Lightning only tells
        # samplers the epoch, so tell the dataset too (before this epoch's loader iterator starts).
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(self.current_epoch)

    # ------------------------------------------------------------------ steps
    def forward(self, batch: Any) -> Any:
        return self.model(batch)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        outputs = self.model(batch)
        terms = self.criterion(outputs, batch)
        loss = self.weighted_loss(terms)
        if self._any_rank_nonfinite(loss):
            return self._on_nonfinite(loss, terms, batch, batch_idx)
        self._log_terms("train", terms, loss, len(batch))
        if self.nonfinite_skipped:
            self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False)
        return loss

    def _any_rank_nonfinite(self, loss: Tensor) -> bool:
        bad = not bool(torch.isfinite(loss.detach()))
        # Ranks must agree: a rank that skips its backward pass while the others run theirs would leave
        # them waiting for its gradients forever.
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        return bad

    def _on_nonfinite(self, loss: Tensor, terms: Mapping[str, Tensor], batch: Any, batch_idx: int) -> None:
        """Stop with a message naming step, terms and samples, or skip the step (``on_nonfinite_loss``)."""
        bad = nonfinite_terms(terms)
        if bad:
            cause = f"non-finite loss term(s) {', '.join(bad)}"
        elif not math.isfinite(float(loss.detach())):
            cause = "the weighted sum of finite terms overflowed"
        else:
            cause = "the loss of another data-parallel rank is not finite"
        values = {k: float(v.detach()) for k, v in terms.items()}
        message = (f"training loss is not finite at global step {self.global_step} (epoch {self.current_epoch}, "
                   f"batch {batch_idx}): {cause}; terms: {values}; samples: {getattr(batch, 'sample_ids', None)}")
        if self.on_nonfinite_loss == "stop":
            # Raised before backward and the optimizer step: the weights (and any checkpoint) stay as they were.
            raise FloatingPointError(message + ". Set task.on_nonfinite_loss=skip to skip such steps instead.")
        self.nonfinite_skipped += 1
        log.warning("%s; step skipped (%d so far)", message, self.nonfinite_skipped)
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped), on_step=True, on_epoch=False)
        return None  # Lightning then runs no backward and no optimizer update for this batch

    def _eval_step(self, batch: Any, metric: Metric, stage: str, keep_records: bool) -> list[Any]:
        outputs = self.model(batch)
        terms = self.criterion(outputs, batch)
        self._log_terms(stage, terms, self.weighted_loss(terms), len(batch))
        predictions = self.postprocess(outputs, batch)
        metric.update(predictions, batch)
        if keep_records:
            records = [p.to_record() for p in predictions]
            # Evaluators that score samples one by one expose the batch's scores: record them per sample.
            scores = getattr(metric, "last_ious", None)
            if scores is not None and len(scores) == len(records):
                for record, iou in zip(records, scores.tolist()):
                    record["iou"] = iou
            self.pending_records.extend(records)
        return predictions

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metric, "val", keep_records=False)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metric, "test", keep_records=True)

    def _log_metric(self, metric: Metric, stage: str) -> dict[str, float]:
        values = {k: float(v) for k, v in metric.compute().items()}
        for k, v in values.items():
            self.log(f"{stage}/{k}", v, sync_dist=False, rank_zero_only=False)
        metric.reset()
        return values

    def on_validation_epoch_end(self) -> None:
        self._log_metric(self.val_metric, "val")

    def on_test_epoch_end(self) -> None:
        self.last_test_metrics = self._log_metric(self.test_metric, "test")

    # ------------------------------------------------------------------ device
    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device) if hasattr(batch, "to") else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    # ------------------------------------------------------------------ checkpoints
    def _exempt_prefixes(self) -> list[str]:
        """State-dict prefixes of submodules that rebuild their own weights (frozen pretrained encoders)."""
        return [f"{name}." for name, m in self.named_modules() if name and getattr(m, "checkpoint_exempt", False)]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped
        prefixes = tuple(self._exempt_prefixes())
        if prefixes:
            state = checkpoint["state_dict"]
            for key in [k for k in state if k.startswith(prefixes)]:
                del state[key]
            checkpoint["exempt_prefixes"] = list(prefixes)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.nonfinite_skipped = int(checkpoint.get("nonfinite_skipped", 0))
        # Put the exempt weights back from this freshly built module, so the strict load that follows
        # still reports every other missing or unexpected key.
        prefixes = tuple(checkpoint.get("exempt_prefixes", ()))
        if prefixes:
            state = checkpoint["state_dict"]
            for key, value in self.state_dict().items():
                if key.startswith(prefixes) and key not in state:
                    state[key] = value

    # ------------------------------------------------------------------ optim
    def _param_groups(self) -> list[dict[str, Any]]:
        """Trainable parameters, grouped by ``model.param_groups()`` when the model defines lr scales.

        A model may return ``[{"params": [...], "lr_scale": 0.01, "name": "backbone"}, ...]``; every
        trainable parameter must appear in exactly one group.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        if not hasattr(self.model, "param_groups"):
            return [{"params": trainable, "lr_scale": 1.0, "name": "all"}] if trainable else []
        groups = [dict(g, params=[p for p in g["params"] if p.requires_grad]) for g in self.model.param_groups()]
        grouped = {id(p) for g in groups for p in g["params"]}
        rest = [p for p in trainable if id(p) not in grouped]
        if rest:
            groups.append({"params": rest, "lr_scale": 1.0, "name": "rest"})
        return [g for g in groups if g["params"]]

    def _run_length_kwargs(self) -> dict[str, int]:
        """``total_steps`` for a schedule that takes it and lacks it (:mod:`grounding.engine.schedules`)."""
        factory = self.scheduler_factory
        func = getattr(factory, "func", factory)
        given = getattr(factory, "keywords", {}) or {}
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            return {}
        if "total_steps" not in params or given.get("total_steps") is not None:
            return {}
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps):
            raise ValueError("the schedule needs total_steps, but the run length is unbounded: set "
                             "trainer.max_epochs or trainer.max_steps, or the schedule's total_steps")
        if steps < 1:
            # Seen on a GPU with the tiny generated pictures: fewer training items than one batch, and
            # drop_last, give an epoch of no batches; the schedule's own error ("total_steps=0") hid that.
            batches = getattr(self.trainer, "num_training_batches", None)
            raise ValueError(f"this run has no optimizer step (training batches per epoch: {batches}): the training "
                             "set is smaller than one batch and the data config drops the last incomplete batch "
                             "(data.drop_last): use more data, a smaller data.batch_size or data.drop_last=false")
        return {"total_steps": int(steps)}

    def configure_optimizers(self) -> Any:
        groups = self._param_groups()
        if not groups:
            raise ValueError("the model has no trainable parameters (is everything frozen?)")
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:  # base lr from config x the group's scale
            group["lr"] = group["lr"] * group.get("lr_scale", 1.0)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, **self._run_length_kwargs())
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if self.monitor is not None:
            config["monitor"] = self.monitor
        return {"optimizer": optimizer, "lr_scheduler": config}


def weighted_loss(terms: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """Σ_k w_k · term_k over a criterion's ``loss_*`` terms; a term missing from ``weights`` has weight 1.

    Raises:
        KeyError: ``weights`` names a term the criterion does not return, or a term is not named ``loss_*``.
        ValueError: no terms at all.
    """
    unknown = set(weights) - set(terms)
    if unknown:
        raise KeyError(f"loss_weights name terms the criterion does not return: {sorted(unknown)}; "
                       f"criterion returns {sorted(terms)}")
    total = None
    for name, value in terms.items():
        if not name.startswith("loss_"):
            raise KeyError(f"criterion term {name!r} must be named loss_*")
        part = weights.get(name, 1.0) * value
        total = part if total is None else total + part
    if total is None:
        raise ValueError("criterion returned no loss terms")
    return total
