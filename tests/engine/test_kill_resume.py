"""A run killed with SIGKILL mid-epoch and resumed from last.ckpt ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from toy_task import REPO, TOY_CONFIGS

from grounding.engine import run
from grounding.engine.config import load_config

GROUNDING = str(Path(sys.executable).with_name("grounding"))
# 24 samples / batch 4 = 6 steps an epoch, 18 in all; a checkpoint every 3 steps puts one in the middle of
# each epoch (3, 9, 15) and one at each epoch's end (6, 12, 18). Dropout makes training draw random numbers,
# so a resumed run only matches if the generators' states were restored too.
COMMON = ["experiment=toy", "trainer.enable_progress_bar=false", "trainer.max_epochs=3",
          "+callbacks.checkpoint.every_n_train_steps=3", "model.net._target_=crash_helpers.DropoutToyModel"]
CHECKPOINT_STEP, FREEZE_STEP = 9, 11  # killed two steps after the mid-epoch-1 checkpoint


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)


def _step_rows(run_dir: Path, version: int) -> dict[int, dict[str, str]]:
    """Logged values by step of one CSV log version (Lightning writes one row per step and per epoch end)."""
    rows: dict[int, dict[str, str]] = {}
    with open(run_dir / "csv" / f"version_{version}" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            rows.setdefault(int(row["step"]), {}).update({k: v for k, v in row.items() if v != ""})
    return rows


def _start_and_kill(run_dir: Path, env: dict[str, str]) -> None:
    marker, output = run_dir.parent / "frozen", run_dir.parent / "output.log"
    freeze = ["+callbacks.freeze._target_=crash_helpers.FreezeAtStep", f"+callbacks.freeze.step={FREEZE_STEP}",
              f"+callbacks.freeze.marker={marker}"]
    cmd = [GROUNDING, "train", *COMMON, *freeze, f"run_dir={run_dir}", "--config-dir", str(TOY_CONFIGS)]
    with open(output, "w") as log:  # a file, not a pipe: an unread pipe could fill up and stall the run
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 240
            while not marker.exists():
                assert proc.poll() is None, f"the run ended before it was killed:\n{output.read_text()[-4000:]}"
                assert time.monotonic() < deadline, "the run never reached the step where it is killed"
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path: Path, toy_env: dict[str, str]) -> None:
    killed = tmp_path / "killed" / "run"
    killed.parent.mkdir()
    _start_and_kill(killed, toy_env)
    last = killed / "checkpoints" / "last.ckpt"
    saved = _load(last)
    assert saved["global_step"] == CHECKPOINT_STEP and saved["epoch"] == 1
    # the checkpoint carries what exact resumption needs
    assert saved["GroundingDataModule"]["train_position"] == {"epoch": 1, "batches": 3, "world_size": 1}
    assert "RngStateCallback" in saved["callbacks"] and saved["optimizer_states"]
    assert not list(last.parent.glob(".*.partial")), "a temporary checkpoint file is left next to last.ckpt"

    resumed = run.train(load_config("train", [*COMMON, f"run_dir={killed}"], extra_dirs=[TOY_CONFIGS]))
    reference_dir = tmp_path / "reference"
    reference = run.train(load_config("train", [*COMMON, f"run_dir={reference_dir}"], extra_dirs=[TOY_CONFIGS]))

    a, b = _load(last), _load(reference_dir / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 18 and a["epoch"] == b["epoch"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], value), f"{name} differs after kill and resume"
    for pa, pb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(pa[k], pb[k]) for k in pb), "optimizer state differs after kill and resume"
    # final metrics (last epoch's training means, validation) are identical ...
    assert resumed.keys() == reference.keys()
    assert resumed == reference
    # ... and so is every value logged after the resume, step by step (version_1: the resumed segment)
    after, ref = _step_rows(killed, 1), _step_rows(reference_dir, 0)
    assert min(after) == CHECKPOINT_STEP and max(after) == max(ref)
    for step, values in after.items():
        if step == 11:  # Lightning does not checkpoint its running means: epoch 1's covers the resumed part only
            values = {k: v for k, v in values.items() if not k.startswith("train/") or k.endswith("_step")}
        expected = {k: v for k, v in ref[step].items() if k in values}
        assert values == expected, f"step {step}: {values} != {expected}"


def test_resume_from_an_epoch_end_checkpoint_is_exact(tmp_path: Path) -> None:
    # The default checkpoints (end of each epoch): stop after epoch 1, resume to 3, compare with 3 in one go.
    common = ["experiment=toy", "trainer.enable_progress_bar=false", "loggers.tensorboard=null",
              "model.net._target_=crash_helpers.DropoutToyModel"]
    split, whole = tmp_path / "split", tmp_path / "whole"
    run.train(load_config("train", [*common, f"run_dir={split}", "trainer.max_epochs=2"], extra_dirs=[TOY_CONFIGS]))
    assert _load(split / "checkpoints" / "last.ckpt")["GroundingDataModule"]["train_position"]["epoch"] == 2
    resumed = run.train(load_config("train", [*common, f"run_dir={split}", "trainer.max_epochs=3"],
                                    extra_dirs=[TOY_CONFIGS]))
    reference = run.train(load_config("train", [*common, f"run_dir={whole}", "trainer.max_epochs=3"],
                                      extra_dirs=[TOY_CONFIGS]))
    a, b = _load(split / "checkpoints" / "last.ckpt"), _load(whole / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 18
    assert all(torch.equal(a["state_dict"][k], v) for k, v in b["state_dict"].items())
    assert resumed == reference
