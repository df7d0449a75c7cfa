"""``grounding export``: a trained model as ``model.safetensors`` + ``config.yaml``, loadable without unpickling.

Export folder layout::

    model.safetensors   the network's state dict (keys as in ``task.model.state_dict()``), tensors only;
                        weights of checkpoint-exempt submodules (frozen text encoders) are left out: they are
                        rebuilt from the config. Header metadata: format, version, exempt_prefixes (JSON), source.
    config.yaml         the run's resolved config (what ``grounding train`` wrote into its run directory)

Files are written to temporary names and renamed, so a folder never holds a half-written model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from grounding.predict.weights import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    checkpoint_model_state,
    export_metadata,
    find_run_config,
    read_config,
    safe_torch_load,
)


def exempt_prefixes(model: nn.Module) -> list[str]:
    """State-dict prefixes of ``model``'s submodules whose weights checkpoints leave out (``checkpoint_exempt``)."""
    return [f"{name}." for name, m in model.named_modules() if name and getattr(m, "checkpoint_exempt", False)]


def _write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_export(state: Mapping[str, torch.Tensor], cfg: DictConfig, out_dir: str | Path, exempt: list[str],
                 source: str = "") -> Path:
    """Write an export folder from a network state dict and its run config; returns the folder.

    Args:
        state: network state dict (no ``model.`` prefix); keys under ``exempt`` are dropped.
        cfg: the run's config (resolved before writing).
        exempt: prefixes of weights rebuilt from the config (e.g. ``["text_encoder."]``).
        source: where the weights came from (stored in the header, informational).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefixes = tuple(exempt)
    # Independent contiguous copies: safetensors refuses tensors that share storage (tied or viewed weights).
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()
               if not (prefixes and k.startswith(prefixes))}
    _write_atomic(out / WEIGHTS_FILE, lambda tmp: save_file(tensors, str(tmp), metadata=export_metadata(
        list(exempt), source)))
    text = OmegaConf.to_yaml(cfg, resolve=True)
    _write_atomic(out / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return out


def export_model(model: nn.Module, cfg: DictConfig, out_dir: str | Path, source: str = "memory") -> Path:
    """Export an in-memory network (``task.model``) with its run config."""
    return write_export(model.state_dict(), cfg, out_dir, exempt_prefixes(model), source)


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, config: str | Path | None = None,
                      allow_pickle: bool = False) -> Path:
    """Export a Lightning checkpoint of ``grounding train``.

    Args:
        checkpoint: ``<run_dir>/checkpoints/*.ckpt``.
        out_dir: the export folder (created).
        config: the run's ``config.yaml``; default: found next to the run (:func:`find_run_config`).
        allow_pickle: read the checkpoint with full unpickling (``weights_only=False``). Only for files you
            trust: unpickling can run code. By default the checkpoint is read with ``weights_only=True``.

    Raises:
        UnsafeCheckpointError: the checkpoint needs full unpickling and ``allow_pickle`` is False.
    """
    checkpoint = Path(checkpoint)
    cfg = read_config(config if config is not None else find_run_config(checkpoint))
    if allow_pickle:
        if not checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)  # the caller vouched for the file
    else:
        ckpt = safe_torch_load(checkpoint)
    state, exempt = checkpoint_model_state(ckpt, checkpoint)
    return write_export(state, cfg, out_dir, exempt, source=checkpoint.name)


def is_export_dir(path: str | Path) -> bool:
    """True for a folder holding ``model.safetensors`` and ``config.yaml``."""
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def load_export(path: str | Path) -> tuple[dict[str, torch.Tensor], DictConfig, list[str]]:
    """Read an export folder: (network state dict on the CPU, run config, exempt prefixes). Nothing is unpickled."""
    from safetensors import safe_open

    path = Path(path)
    if not is_export_dir(path):
        raise FileNotFoundError(f"{path} is not an export folder (expected {WEIGHTS_FILE} and {CONFIG_FILE}; "
                                "make one with `grounding export CKPT --out DIR`)")
    state: dict[str, torch.Tensor] = {}
    with safe_open(str(path / WEIGHTS_FILE), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        for key in f.keys():
            state[key] = f.get_tensor(key)
    exempt = list(json.loads(meta.get("exempt_prefixes", "[]")))
    return state, read_config(path / CONFIG_FILE), exempt
