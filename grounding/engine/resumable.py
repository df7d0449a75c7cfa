"""A training data order that can be resumed mid-epoch, exactly.

The order of epoch ``e`` is a pure function of ``(seed, e)``: a permutation drawn from a generator seeded
with ``seed + e``, split across ranks as ``torch``'s ``DistributedSampler`` does (one rank: the
permutation itself). Nothing depends on how many epochs this process has run, so a run restarted from a
checkpoint sees the same order as one that never stopped. The loader counts the batches it has handed out;
:class:`grounding.engine.GroundingDataModule` stores that position in the checkpoint and, on resume, the
loader skips what was already trained and starts where the interrupted run stood.

Datasets draw their augmentation from ``(seed, epoch, index)`` (``datasets/refer3d.py``); on resume the loader
tells the dataset its epoch before the first batch, because Lightning does not call
``on_train_epoch_start`` when it restarts in the middle of an epoch.

Each iteration of a ``DataLoader`` draws a base seed for its workers, from the global torch generator unless
the loader has its own. The training loader draws it from a generator seeded by ``(seed, epoch)``: the global
generator then advances only with training itself, so it is in the same state after a resume (see
:mod:`grounding.engine.rng`) whether the checkpoint was written before or after the epoch's iterator was
created, and fresh (non-persistent) workers get the same seeds as in an uninterrupted run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderPosition:
    """Where training stands in the data: ``batches`` batches of epoch ``epoch`` are done (per rank)."""

    epoch: int
    batches: int
    world_size: int = 1

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LoaderPosition:
        return cls(int(state["epoch"]), int(state["batches"]), int(state.get("world_size", 1)))


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed + epoch``) that can start an epoch part-way through.

    Args:
        dataset: the training dataset (only its length is used).
        num_replicas, rank: the data-parallel world; ``1, 0`` for one process (no process group needed).
        seed: the shuffle seed.
        drop_last: drop the tail that does not divide evenly across ranks (else pad by repeating).
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 drop_last: bool = False) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=drop_last)
        self._pending: tuple[int, int] | None = None  # (epoch, indices to skip) for the next iteration
        # What the latest iteration used. Read back from here rather than from ``self.epoch``: DataLoader
        # workers start iterating when the loader's iterator is created, which may be before Lightning
        # calls ``set_epoch``, and without workers only at the first batch, which is after it.
        self.iter_epoch = 0
        self.iter_start = 0

    def resume_at(self, epoch: int, start: int) -> None:
        """Make the next iteration run epoch ``epoch`` from this rank's ``start``-th index on."""
        self.set_epoch(epoch)
        self._pending = (epoch, start)

    def epoch_order(self, epoch: int) -> list[int]:
        """This rank's full index order of ``epoch`` (whatever the current epoch)."""
        current = self.epoch
        self.set_epoch(epoch)
        try:
            return list(super().__iter__())
        finally:
            self.set_epoch(current)

    def __iter__(self) -> Iterator[int]:
        epoch, pending, self._pending = self.epoch, self._pending, None
        # A position saved for another epoch (Lightning moved on) is dropped rather than misapplied.
        start = pending[1] if pending is not None and pending[0] == epoch else 0
        self.iter_epoch, self.iter_start = epoch, start
        return iter(self.epoch_order(epoch)[start:])


class ResumableLoader(DataLoader):
    """Training ``DataLoader`` over a :class:`ResumableSampler` that knows its position in the epoch.

    Construct it like a ``DataLoader`` with ``sampler=ResumableSampler(...)`` (same signature, so Lightning can
    re-create it). ``len()`` stays the full epoch length, which is what Lightning's progress counters expect;
    after :meth:`resume` the next iteration yields only the batches not yet trained.
    """

    @property
    def resumable_sampler(self) -> ResumableSampler:
        if not isinstance(self.sampler, ResumableSampler):
            raise TypeError(f"ResumableLoader needs a ResumableSampler, got {type(self.sampler).__name__}")
        return self.sampler

    def _counter(self) -> list[int]:
        # DataLoader restricts attribute setting after __init__ (and Lightning may re-create it from its
        # __init__ arguments), so the count lives in a lazily created one-element list.
        return self.__dict__.setdefault("_served", [0])

    def position(self) -> LoaderPosition:
        """Epoch of the current (or latest) iteration and the batches of it done so far."""
        sampler = self.resumable_sampler
        skipped = sampler.iter_start // (self.batch_size or 1)
        return LoaderPosition(sampler.iter_epoch, skipped + self._counter()[0], sampler.num_replicas)

    def resume(self, position: LoaderPosition) -> None:
        """Start the next iteration at ``position`` (its epoch, after its ``batches`` batches)."""
        sampler = self.resumable_sampler
        if position.world_size != sampler.num_replicas:
            log.warning("resuming with %d data-parallel processes from a checkpoint written with %d: the "
                        "rest of epoch %d is re-split and will not match an uninterrupted run exactly",
                        sampler.num_replicas, position.world_size, position.epoch)
        # Batches are consecutive runs of the sampler's order, so skipping b batches skips b * batch_size indices.
        sampler.resume_at(position.epoch, position.batches * (self.batch_size or 1))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(position.epoch)

    def __iter__(self) -> Iterator[Any]:
        counter = self._counter()
        counter[0] = 0
        sampler = self.resumable_sampler
        seed = int(np.random.SeedSequence([sampler.seed % 2**64, sampler.epoch]).generate_state(1)[0])
        self.generator = torch.Generator().manual_seed(seed)  # worker base seed: see the module docstring
        return _CountingIterator(super().__iter__(), counter)

    # Lightning saves and restores the state of loaders that have these two methods, but restores it only
    # when it restarts inside an epoch, and after it has already created that epoch's iterator. The position
    # is therefore restored by GroundingDataModule (always, before the loader's first iteration); the methods
    # are here so that Lightning knows the loader is resumable.
    def state_dict(self) -> dict[str, Any]:
        return self.position().to_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


class _CountingIterator(Iterator[Any]):
    """Wraps a ``DataLoader`` iterator and counts the batches it hands to the training loop."""

    def __init__(self, inner: Iterator[Any], counter: list[int]) -> None:
        self.inner = inner
        self.counter = counter

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        self.counter[0] += 1
        return batch

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]
