"""The training order is a pure function of (seed, epoch) and the loader resumes mid-epoch exactly."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DistributedSampler
from toy_task import ToyDataset

from grounding.engine import GroundingDataModule
from grounding.engine.resumable import LoaderPosition, ResumableLoader, ResumableSampler


class _EpochDataset(ToyDataset):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


def _ids(batches: list) -> list[list[str]]:
    return [b.sample_ids for b in batches]


def test_order_depends_only_on_seed_and_epoch() -> None:
    ds = ToyDataset(size=10)
    sampler = ResumableSampler(ds, seed=3)
    assert sampler.epoch_order(2) == torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
    sampler.set_epoch(2)
    assert list(sampler) == ResumableSampler(ds, seed=3).epoch_order(2)  # no memory of earlier epochs
    assert sampler.epoch_order(0) != sampler.epoch_order(1)
    # ranks take every world-size-th sample of the same order, exactly as torch's DistributedSampler
    for rank in range(3):
        reference = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=3)
        reference.set_epoch(4)
        assert ResumableSampler(ds, num_replicas=3, rank=rank, seed=3).epoch_order(4) == list(reference)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_resumes_mid_epoch(num_workers: int) -> None:
    def loader(ds: ToyDataset) -> ResumableLoader:
        return ResumableLoader(ds, batch_size=4, sampler=ResumableSampler(ds, seed=7), collate_fn=ds.collate,
                               num_workers=num_workers)

    ds = _EpochDataset(size=22)  # 6 batches, the last one short
    full = loader(ds)
    full.sampler.set_epoch(3)
    reference, it = [], iter(full)
    for _ in range(2):
        reference.append(next(it))
    assert full.position() == LoaderPosition(3, 2)
    reference += list(it)
    assert full.position() == LoaderPosition(3, 6) and len(full) == 6

    fresh_ds = _EpochDataset(size=22)
    resumed = loader(fresh_ds)
    resumed.resume(LoaderPosition(3, 2))
    assert fresh_ds.epoch == 3  # told before any batch, Lightning skips on_train_epoch_start mid-epoch
    rest = list(resumed)
    assert _ids(rest) == _ids(reference[2:])
    assert resumed.position() == LoaderPosition(3, 6) and len(resumed) == 6
    # the skip applies once: the next epoch is whole
    resumed.sampler.set_epoch(4)
    assert len(list(resumed)) == 6


def test_datamodule_saves_and_restores_the_position() -> None:
    dm = GroundingDataModule(train=ToyDataset(size=24), batch_size=4, seed=1)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, num_training_batches=6)
    assert dm.state_dict() == {}  # nothing to save before training starts
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(2)
    it = iter(loader)
    next(it), next(it)
    state = dm.state_dict()
    assert state == {"train_position": {"epoch": 2, "batches": 2, "world_size": 1}}
    list(it)  # a finished epoch resumes at the start of the next one
    assert dm.state_dict() == {"train_position": {"epoch": 3, "batches": 0, "world_size": 1}}

    restored = GroundingDataModule(train=ToyDataset(size=24), batch_size=4, seed=1)
    restored.trainer = dm.trainer
    restored.load_state_dict(state)
    rest = list(restored.train_dataloader())
    loader.sampler.set_epoch(2)
    assert _ids(rest) == _ids(list(loader))[2:]
