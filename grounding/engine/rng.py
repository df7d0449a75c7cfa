"""Random number generator states in checkpoints, so that a resumed run draws what an uninterrupted one would.

Lightning saves the model, optimizer, schedulers and loop counters, but not the global generators of
``torch`` (CPU and CUDA), ``numpy`` and ``random``, which dropout, random augmentation on the main process
and samplers without their own generator draw from. :class:`RngStateCallback` stores them (every rank's, in
data-parallel runs) and puts them back when training starts, after Lightning has set everything up, because
setting up consumes random numbers too (each ``DataLoader`` iterator draws a worker seed).

Every process of a data-parallel run is seeded with the same ``seed`` (so that all build the same model), which
would also give every rank the same dropout masks and random flips. When a fresh (not resumed) fit starts, rank
``r >= 1`` therefore re-seeds its global generators with ``seed + r``; rank 0 keeps its stream, the one a
single-process run draws. Samplers and the datasets' per-item generators are seeded separately and are unaffected.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def collect_rng_states() -> dict[str, Any]:
    """This process's generator states (CUDA only when CUDA is initialised).

    Only tensors and plain Python values, so that ``torch.load(weights_only=True)`` (the default of
    ``Trainer.fit(ckpt_path=...)`` with current torch) still reads the checkpoint.
    """
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`collect_rng_states` returned."""
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:
            log.warning("checkpoint has CUDA generator states of %d devices, this process sees %d: CUDA "
                        "random numbers will differ from the interrupted run", len(cuda), torch.cuda.device_count())


def seed_rank_streams(rank: int) -> int:
    """Re-seed ``torch`` (CPU and CUDA), ``numpy`` and ``random`` with ``torch.initial_seed() + rank``; returns it."""
    seed = (torch.initial_seed() + int(rank)) % 2**32
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    return seed


def _gather(states: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's states, in rank order (called on every rank: Lightning dumps checkpoints on all ranks)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [states]
    gathered: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, states)
    return gathered


class RngStateCallback(Callback):
    """Saves every rank's generator states in checkpoints and restores them when a resumed fit starts."""

    def __init__(self) -> None:
        super().__init__()
        self._to_restore: list[dict[str, Any]] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"ranks": _gather(collect_rng_states())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict.get("ranks")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        ranks, self._to_restore = self._to_restore, None
        if not ranks:
            if trainer.global_rank > 0:
                seed_rank_streams(trainer.global_rank)
            return
        rank = trainer.global_rank
        if len(ranks) != trainer.world_size:
            log.warning("checkpoint has generator states of %d processes, this run has %d: every process takes "
                        "rank 0's, so random numbers will differ from the interrupted run", len(ranks),
                        trainer.world_size)
            rank = 0
        set_rng_states(ranks[rank])
