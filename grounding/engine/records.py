"""Per-sample predictions and metrics files of an evaluation run.

Each rank appends its records to ``predictions/rank<r>.jsonl`` as batches finish (so a crash keeps
what was done); at the end rank 0 merges them into ``predictions.jsonl``, sorted by ``sample_id``.
Final files are written to a temporary name and renamed, so a reader never sees half a file and an
interrupted run never truncates the results of an earlier one. Rank 0 also checks the merged records against the
split (:mod:`grounding.engine.coverage`): :attr:`PredictionWriter.coverage` says how many samples were evaluated,
skipped or evaluated twice.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from grounding.engine.coverage import check_coverage


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, naming the file and line of any malformed record."""
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: line {n} is not valid JSON ({e.msg})") from e
    return records


class PredictionWriter(Callback):
    """Streams ``GroundingTask.pending_records`` to disk during ``trainer.test``.

    Args:
        out_dir: the run directory; records go to ``out_dir/predictions/`` and ``out_dir/predictions.jsonl``.
    """

    def __init__(self, out_dir: str | Path) -> None:
        super().__init__()
        self.out_dir = Path(out_dir)
        self.coverage: dict[str, Any] | None = None  # rank 0, after the test loop (check_coverage's report)

    def _rank_file(self, rank: int) -> Path:
        return self.out_dir / "predictions" / f"rank{rank}.jsonl"

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self._rank_file(trainer.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")  # this rank's part of *this* run starts empty

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        records = getattr(pl_module, "pending_records", [])
        if not records:
            return
        with open(self._rank_file(trainer.global_rank), "a") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
        records.clear()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        trainer.strategy.barrier("prediction-writer")
        if trainer.global_rank != 0:
            return
        merged: list[dict[str, Any]] = []
        for rank in range(trainer.world_size):
            merged.extend(read_jsonl(self._rank_file(rank)))
        merged.sort(key=lambda r: str(r.get("sample_id", "")))
        atomic_write_text(self.out_dir / "predictions.jsonl",
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in merged))
        loaders = trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is not None:
            self.coverage = check_coverage(loader.dataset, merged)
