"""Engine pieces in isolation: loss weighting, failure messages, precision, record files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from toy_task import ToyBatch, ToyCriterion, ToyDataset, ToyModel, ToyPostprocess

from grounding.engine import GroundingTask
from grounding.engine.records import read_jsonl, write_json
from grounding.engine.run import resolve_precision
from grounding.metrics.evaluators import ReferringMaskMetric


def _task(**kw) -> GroundingTask:
    return GroundingTask(ToyModel(), ToyCriterion(), ToyPostprocess(), ReferringMaskMetric(),
                         optimizer=lambda p: torch.optim.SGD(p, lr=0.1), **kw)


def _batch() -> ToyBatch:
    ds = ToyDataset(size=3)
    return ToyBatch.collate([ds[i] for i in range(3)])


def test_weighted_loss() -> None:
    task = _task(loss_weights={"loss_dice": 0.5})
    terms = {"loss_bce": torch.tensor(2.0), "loss_dice": torch.tensor(4.0)}
    assert task.weighted_loss(terms).item() == pytest.approx(4.0)
    with pytest.raises(KeyError, match="loss_typo"):
        _task(loss_weights={"loss_typo": 1.0}).weighted_loss(terms)
    with pytest.raises(KeyError, match="loss_"):
        task.weighted_loss({"bce": torch.tensor(1.0)})


def test_non_finite_loss_names_the_samples() -> None:
    task = _task()
    task.model.mlp[0].weight.data.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="s0_0000"):
        task.training_step(_batch(), 0)


def test_frozen_model_has_nothing_to_optimize() -> None:
    task = _task()
    for p in task.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        task.configure_optimizers()


def test_precision_auto_is_fp32_on_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = OmegaConf.create({"trainer": {"precision": "auto", "accelerator": "auto"}})
    resolve_precision(cfg)
    assert cfg.trainer.precision == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = OmegaConf.create({"trainer": {"precision": "auto", "accelerator": "auto"}})
    resolve_precision(cfg)
    assert cfg.trainer.precision == "16-mixed"
    cfg = OmegaConf.create({"trainer": {"precision": "bf16-mixed"}})
    resolve_precision(cfg)
    assert cfg.trainer.precision == "bf16-mixed"


def test_records_round_trip_and_bad_line(tmp_path: Path) -> None:
    write_json(tmp_path / "m.json", {"a": 1})
    assert (tmp_path / "m.json").read_text().startswith("{")
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"sample_id": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"p\.jsonl: line 2"):
        read_jsonl(bad)


class _EpochAwareToy(ToyDataset):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)


def test_dataset_is_told_the_epoch(tmp_path: Path) -> None:
    import lightning as L

    from grounding.engine import GroundingDataModule

    train = _EpochAwareToy(size=8)
    dm = GroundingDataModule(train=train, val=ToyDataset(size=2, seed=1), batch_size=4)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        use_distributed_sampler=False)
    trainer.fit(_task(), datamodule=dm)
    assert train.epochs == [0, 1, 2]


def test_param_groups_scale_the_learning_rate() -> None:
    task = _task()
    task.model.param_groups = lambda: [{"params": list(task.model.mlp[0].parameters()), "lr_scale": 0.01,
                                        "name": "first"}]
    opt = task.configure_optimizers()
    lrs = sorted((g["name"], g["lr"]) for g in opt.param_groups)
    assert lrs == [("first", pytest.approx(0.001)), ("rest", pytest.approx(0.1))]
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(task.parameters()))


def test_exempt_weights_stay_out_of_checkpoints() -> None:
    task = _task()
    task.model.mlp[0].checkpoint_exempt = True
    ckpt = {"state_dict": task.state_dict()}
    task.on_save_checkpoint(ckpt)
    assert not any(k.startswith("model.mlp.0.") for k in ckpt["state_dict"])
    assert "model.mlp.2.weight" in ckpt["state_dict"]
    fresh = _task()
    fresh.model.mlp[0].checkpoint_exempt = True
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)  # strict: nothing else may be missing
    assert torch.equal(fresh.model.mlp[2].weight, task.model.mlp[2].weight)


def test_data_parallel_ranks_get_their_own_random_streams() -> None:
    """At a fresh fit start rank r >= 1 re-seeds with seed + r (distinct dropout masks); rank 0 keeps its stream."""
    from types import SimpleNamespace

    from grounding.engine.rng import RngStateCallback

    def draws(rank: int) -> torch.Tensor:
        torch.manual_seed(7)  # what seed_everything gives every rank
        RngStateCallback().on_train_start(SimpleNamespace(global_rank=rank, world_size=2), None)
        return torch.rand(4)

    torch.manual_seed(7)
    single = torch.rand(4)
    assert torch.equal(draws(0), single)  # rank 0 draws what one process draws
    rank1 = draws(1)
    torch.manual_seed(8)  # seed + rank
    assert torch.equal(rank1, torch.rand(4)) and not torch.equal(rank1, single)
