"""A data module built from hydra configs: datasets, a collate function and loader settings.

Distributed sampling is done here rather than by Lightning's automatic sampler replacement
(``Trainer(use_distributed_sampler=False)`` in ``configs/trainer``), because evaluation must see every
sample exactly once: ``torch``'s ``DistributedSampler`` pads the split with duplicated samples, which
biases mIoU/oIoU on multi-GPU runs (a known defect of DIT's evaluation). Training uses a seeded
``DistributedSampler`` (:class:`grounding.engine.resumable.ResumableSampler`; one replica on one process);
evaluation uses an unrepeated one, so ranks may get one sample more or less.

The training order of epoch ``e`` is a pure function of ``(seed, e)``, and the data module saves the
training loader's position in every checkpoint (``state_dict``), so a run resumed from a checkpoint written
in the middle of an epoch continues with exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from grounding.engine.resumable import LoaderPosition, ResumableLoader, ResumableSampler


class GroundingDataModule(L.LightningDataModule):
    """Loaders for the train / val / test splits of one task.

    Args:
        train, val, test: map-style datasets (any may be None when that stage is not run).
        collate_fn: builds the task's batch dataclass from a list of items; defaults to the
            dataset's ``collate`` attribute.
        batch_size: samples per training batch per process.
        eval_batch_size: samples per evaluation batch per process (defaults to ``batch_size``).
        num_workers: loader worker processes; workers are seeded from ``seed``.
        seed: seed of the training shuffle: epoch ``e`` is ordered by ``seed + e`` (the same global order on
            every run and every world size; each rank takes every world-size-th sample of it).
        drop_last: drop the last incomplete training batch.
        pin_memory: pin host memory of batches (CUDA).
        root: the dataset's folder; only recorded (configs interpolate their paths from it).
        source: other settings the split configs share (e.g. the image tasks' dataset name, partition and
            canvas size); only recorded, like ``root``.
        eval_splits: split name -> the fields of ``val`` that select that split, for ``grounding eval
            split=<name>`` (:func:`grounding.engine.run.evaluation_dataset`); only recorded here.
    """

    def __init__(self, train: Dataset | None = None, val: Dataset | None = None, test: Dataset | None = None,
                 collate_fn: Callable[[list[Any]], Any] | None = None, batch_size: int = 1,
                 eval_batch_size: int | None = None, num_workers: int = 0, seed: int = 0,
                 drop_last: bool = False, pin_memory: bool = False, root: str | None = None,
                 source: Mapping[str, Any] | None = None,
                 eval_splits: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.datasets = {"train": train, "val": val, "test": test}
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.root = root
        self.source = dict(source or {})
        self.eval_splits = dict(eval_splits or {})
        self._train_loader: ResumableLoader | None = None
        self._resume_position: LoaderPosition | None = None  # from a checkpoint, for the next train loader

    def _dataset(self, split: str) -> Dataset:
        ds = self.datasets[split]
        if ds is None:
            raise ValueError(f"no {split!r} dataset is configured (set data.{split} in the config)")
        return ds

    def _collate(self, ds: Dataset) -> Callable[[list[Any]], Any]:
        fn = self.collate_fn or getattr(ds, "collate", None)
        if fn is None:
            raise ValueError(f"{type(ds).__name__} has no collate method and data.collate_fn is not set")
        return fn

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return trainer.world_size, trainer.global_rank

    def _loader(self, split: str) -> DataLoader:
        ds = self._dataset(split)
        world, rank = self._world()
        if split == "train":
            return self._train(ds, world, rank)
        sampler = (UnrepeatedDistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
                   if world > 1 else SequentialSampler(ds))
        # An own generator (for the workers' base seed): evaluating never advances the global generator,
        # so where a checkpoint falls relative to a validation cannot change what a resumed run draws.
        return DataLoader(ds, batch_size=self.eval_batch_size, sampler=sampler, collate_fn=self._collate(ds),
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, generator=torch.Generator().manual_seed(self.seed))

    def _train(self, ds: Dataset, world: int, rank: int) -> ResumableLoader:
        sampler = ResumableSampler(ds, num_replicas=world, rank=rank, seed=self.seed, drop_last=self.drop_last)
        loader = ResumableLoader(ds, batch_size=self.batch_size, sampler=sampler, collate_fn=self._collate(ds),
                                 num_workers=self.num_workers, drop_last=self.drop_last,
                                 pin_memory=self.pin_memory, persistent_workers=self.num_workers > 0)
        if self._resume_position is not None:
            loader.resume(self._resume_position)
            self._resume_position = None
        self._train_loader = loader
        return loader

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The training loader's position (Lightning stores it in every checkpoint)."""
        if self._train_loader is None:
            return {}
        position = self._train_loader.position()
        trainer = self.trainer
        # An epoch whose batches are all done resumes at the start of the next one. Lightning's count of
        # batches per epoch is used because limit_train_batches may end an epoch before the loader does.
        if trainer is not None and position.batches >= trainer.num_training_batches:
            position = LoaderPosition(position.epoch + 1, 0, position.world_size)
        return {"train_position": position.to_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Remember the saved position; the next training loader starts there."""
        if "train_position" in state_dict:
            self._resume_position = LoaderPosition.from_dict(state_dict["train_position"])

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
