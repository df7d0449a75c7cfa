"""Real 2-process DDP on CPU (gloo), launched the way users launch it: through the `grounding` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from toy_task import REPO, TOY_CONFIGS

GROUNDING = str(Path(sys.executable).with_name("grounding"))


def _grounding(args: list[str], env: dict[str, str], cwd: Path) -> str:
    cmd = [GROUNDING, *args, "--config-dir", str(TOY_CONFIGS)]
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"grounding {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


@pytest.mark.slow
def test_ddp_train_and_eval_match_single_process(tmp_path: Path, toy_env: dict[str, str]) -> None:
    quiet = ["experiment=toy", "trainer.enable_progress_bar=false"]
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]

    # train with two gloo processes
    train_dir = tmp_path / "train"
    _grounding(["train", *quiet, *ddp, f"run_dir={train_dir}", "trainer.max_epochs=2"], toy_env, REPO)
    ckpt = train_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    # evaluate the same checkpoint with one and with two processes (11 samples: uneven split)
    results = {}
    for name, extra in {"single": [], "ddp": ddp}.items():
        out_dir = tmp_path / name
        stdout = _grounding(["eval", *quiet, *extra, f"run_dir={out_dir}", f"ckpt_path={ckpt}"], toy_env, REPO)
        assert "overall" in stdout and "definitions:" in stdout  # rank 0 prints the table
        results[name] = (json.loads((out_dir / "metrics.json").read_text()),
                         (out_dir / "predictions.jsonl").read_text())
    single, ddp_res = results["single"], results["ddp"]
    assert single[0]["world_size"] == 1 and ddp_res[0]["world_size"] == 2
    assert ddp_res[0]["metrics"]["overall"]["count"] == 11  # every sample once, no padding duplicates
    samples = ddp_res[0]["samples"]  # rank 0's check of the merged records against the split
    assert (samples["expected"], samples["evaluated"], samples["skipped"], samples["duplicated"]) == (11, 11, 0, 0)
    assert single[0]["metrics"].keys() == ddp_res[0]["metrics"].keys()
    for group, values in single[0]["metrics"].items():
        assert values.keys() == ddp_res[0]["metrics"][group].keys()
        for key, value in values.items():
            assert ddp_res[0]["metrics"][group][key] == pytest.approx(value, abs=1e-9), (group, key)
    assert single[1] == ddp_res[1]  # identical per-sample predictions, merged and sorted
