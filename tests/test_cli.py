"""The `grounding` command lists only subcommands that work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from grounding.cli.main import build_parser

GROUNDING = str(Path(sys.executable).with_name("grounding"))


def test_help_lists_working_subcommands() -> None:
    out = subprocess.run([GROUNDING, "--help"], capture_output=True, text=True, check=True).stdout
    assert "train" in out and "eval" in out
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"train", "eval", "prepare", "predict", "export", "render", "bench",
                                 "demo"}


def test_unknown_subcommand_fails() -> None:
    proc = subprocess.run([GROUNDING, "frobnicate"], capture_output=True, text=True)
    assert proc.returncode != 0 and "invalid choice" in proc.stderr


def test_print_config(tmp_path: Path) -> None:
    out = subprocess.run([GROUNDING, "train", "--print-config", f"run_dir={tmp_path}", "trainer.max_epochs=7"],
                         capture_output=True, text=True, check=True).stdout
    assert "max_epochs: 7" in out and str(tmp_path) in out
