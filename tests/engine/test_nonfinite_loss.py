"""A NaN training loss stops the run with a message naming the step and the term, or skips the step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_task import TOY_CONFIGS

from grounding.engine import GroundingTask, run
from grounding.engine.config import load_config

NAN_CRITERION = ["model.criterion._target_=crash_helpers.NaNAtCriterion"]


def _overrides(run_dir: Path, nan_steps: list[int]) -> list[str]:
    return ["experiment=toy", f"run_dir={run_dir}", "trainer.enable_progress_bar=false", "trainer.max_epochs=2",
            "loggers.tensorboard=null", *NAN_CRITERION, f"+model.criterion.steps={nan_steps}"]


def _finite_weights(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())


def test_nan_loss_stops_before_the_update_and_names_step_and_term(tmp_path: Path) -> None:
    # 6 steps an epoch: the epoch-0 checkpoint exists, step 8 (epoch 1, batch 2) turns loss_dice NaN.
    # save_on_exception writes the weights as they are when the run stops: they must still be finite.
    overrides = [*_overrides(tmp_path, [8]), "+callbacks.checkpoint.save_on_exception=true"]
    with pytest.raises(FloatingPointError) as error:
        run.train(load_config("train", overrides, extra_dirs=[TOY_CONFIGS]))
    message = str(error.value)
    assert "global step 8 " in message and "epoch 1, batch 2" in message
    assert "non-finite loss term(s) loss_dice;" in message and "task.on_nonfinite_loss=skip" in message
    checkpoints = sorted((tmp_path / "checkpoints").glob("*.ckpt"))
    assert {c.name for c in checkpoints} >= {"epoch001.ckpt", "last.ckpt"}, checkpoints
    for ckpt in checkpoints:
        assert _finite_weights(ckpt), f"{ckpt.name} holds non-finite weights"
    # last.ckpt was rewritten when the run stopped: at step 8, before that step's update
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 8


def test_skip_policy_leaves_the_weights_alone_and_counts(tmp_path: Path) -> None:
    overrides = [*_overrides(tmp_path, [2, 8]), "task.on_nonfinite_loss=skip",
                 # fails the run if the weights change on steps 2 and 8, or do not change on the others
                 "+callbacks.watch._target_=crash_helpers.AssertUpdatesOnlyOutside", "+callbacks.watch.steps=[2,8]"]
    metrics = run.train(load_config("train", overrides, extra_dirs=[TOY_CONFIGS]))
    assert metrics["train/nonfinite_skipped"] == 2.0
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == 12 and state["nonfinite_skipped"] == 2  # a skipped step still counts
    assert _finite_weights(last)
    assert metrics["val/overall/mIoU"] > 50.0  # training went on normally


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="on_nonfinite_loss"):
        GroundingTask(torch.nn.Linear(1, 1), None, None, __import__("torchmetrics").MeanMetric(),
                      optimizer=None, on_nonfinite_loss="ignore")
