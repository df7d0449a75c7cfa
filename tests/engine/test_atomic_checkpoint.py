"""A crash in the middle of a checkpoint save leaves the previous checkpoint whole and loadable."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from toy_task import TOY_CONFIGS

from grounding.engine import run
from grounding.engine.checkpoint_io import TEMP_SUFFIX, AtomicCheckpointIO
from grounding.engine.config import load_config
from grounding.engine.rng import RngStateCallback


class _Crash(RuntimeError):
    pass


def _half_then_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``torch.save`` write half of the real bytes and then fail, as a process dying mid-save would."""
    real_save = torch.save

    def half_save(obj, f, *args, **kwargs) -> None:
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        data = buffer.getvalue()
        if isinstance(f, (str, Path)):
            Path(f).write_bytes(data[: len(data) // 2])
        else:
            f.write(data[: len(data) // 2])
            f.flush()
        raise _Crash("simulated crash in the middle of a checkpoint save")

    monkeypatch.setattr(torch, "save", half_save)


def _partials(folder: Path) -> list[Path]:
    return sorted(folder.glob(f".*{TEMP_SUFFIX}"))


def test_interrupted_save_keeps_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    io_plugin = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io_plugin.save_checkpoint({"global_step": 1, "w": torch.arange(1000.0)}, path)
    with monkeypatch.context() as m:
        _half_then_crash(m)
        with pytest.raises(_Crash):
            io_plugin.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    state = io_plugin.load_checkpoint(path)
    assert state["global_step"] == 1 and torch.equal(state["w"], torch.arange(1000.0))
    assert _partials(path.parent) == [], "the half-written temporary file was not removed"
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("trainer", ["default", "ddp"])
def test_every_trainer_saves_atomically_with_rng_states(tmp_path: Path, trainer: str) -> None:
    cfg = load_config("train", ["experiment=toy", f"run_dir={tmp_path}", f"trainer={trainer}",
                                "trainer.accelerator=cpu"], extra_dirs=[TOY_CONFIGS])
    built = run.build_trainer(cfg)
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)
    assert any(isinstance(c, RngStateCallback) for c in built.callbacks)


def test_trainer_saves_through_the_atomic_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    common = ["experiment=toy", f"run_dir={run_dir}", "trainer.enable_progress_bar=false",
              "loggers.tensorboard=null"]
    run.train(load_config("train", [*common, "trainer.max_epochs=1"], extra_dirs=[TOY_CONFIGS]))
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    assert last.is_file() and not last.is_symlink()  # save_last writes a full checkpoint, not a link
    before = last.read_bytes()

    # The epoch-1 save (last.ckpt and epoch001.ckpt) crashes half-way through the file.
    with monkeypatch.context() as m:
        _half_then_crash(m)
        with pytest.raises(_Crash):
            run.train(load_config("train", [*common, "trainer.max_epochs=2"], extra_dirs=[TOY_CONFIGS]))
    assert last.read_bytes() == before
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 0 and state["global_step"] == 6
    assert _partials(ckpt_dir) == [] and sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch000.ckpt", "last.ckpt"]

    # A SIGKILL during a save leaves its temporary file (never under a checkpoint's name); the next run
    # removes it and resumes from the intact last.ckpt.
    leftover = ckpt_dir / f".last.ckpt.x1y2z3{TEMP_SUFFIX}"
    leftover.write_bytes(before[: len(before) // 2])
    run.train(load_config("train", [*common, "trainer.max_epochs=2"], extra_dirs=[TOY_CONFIGS]))
    assert not leftover.exists()
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["epoch"] == 1 and state["global_step"] == 12
