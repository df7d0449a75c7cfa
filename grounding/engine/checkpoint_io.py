"""Crash-safe checkpoint files: a checkpoint on disk is always either the old one or the new one, complete.

Lightning's own ``TorchCheckpointIO`` serialises into memory and writes through an fsspec transaction whose
temporary file lives in the system temp folder (a copy, not a rename, when that is another file system) and
is never fsynced, so a crash or a power cut during a save can leave a truncated ``last.ckpt``. Here every
save goes to a temporary file in the checkpoint's own folder, is fsynced, and is renamed over the final name
with ``os.replace`` (atomic on POSIX); the folder is fsynced too so that the rename itself survives a power
cut. ``last.ckpt`` is written through the same path (``ModelCheckpoint(save_last=True)`` saves it as a full
checkpoint, not a link).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)

# Temporary files are hidden and carry this suffix, so they are never mistaken for checkpoints
# (``*.ckpt`` globs) and a later run can recognise what a killed one left behind.
TEMP_SUFFIX = ".partial"


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` through a temporary file in the same folder, fsync and ``os.replace``.

    If anything fails (or the process dies) before the rename, ``path`` keeps its previous content;
    on an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Makes the rename durable; not every file system lets a folder be opened for fsync (best effort).
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that a killed save left in ``folder``; returns what was removed.

    Call it only when no save can be in progress (before ``fit`` starts, on the rank that saves).
    """
    folder = Path(folder)
    removed = []
    for tmp in folder.glob(f".*{TEMP_SUFFIX}") if folder.is_dir() else ():
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
            removed.append(tmp)
    if removed:
        log.info("removed %d partial checkpoint file(s) left by an interrupted save in %s", len(removed), folder)
    return removed


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic (see the module docstring).

    Remote paths (``s3://`` and other fsspec URLs) keep Lightning's transaction-based save.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        atomic_torch_save(checkpoint, path)
