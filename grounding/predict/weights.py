"""Loading model weights and run configs for prediction without running code from the files.

Two sources of weights:

- an **export folder** (``grounding export``): ``model.safetensors`` (tensors only, no pickle) and ``config.yaml``
  (the run's resolved config); nothing in it is ever unpickled;
- a **Lightning checkpoint** (``*.ckpt``): read with ``torch.load(weights_only=True)``, whose unpickler accepts
  tensors and plain containers only. A checkpoint that needs anything else is refused with
  :class:`UnsafeCheckpointError`, because unpickling arbitrary objects can run arbitrary code.

Configs are YAML (``OmegaConf.load``, a safe loader). Hydra's ``instantiate`` imports whatever a ``_target_``
names, so :func:`check_targets` refuses targets outside the toolkit's packages before anything is built: a
crafted ``config.yaml`` cannot make the predictor call ``os.system`` either.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
MODEL_PREFIX = "model."  # GroundingTask keeps the network in ``self.model``
# Hydra targets a prediction config may name: the toolkit's own packages and torch's modules.
ALLOWED_TARGET_PREFIXES = ("grounding.", "pointcloud.", "datasets.", "segmentation.", "torch.nn.")


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint holds pickled objects beyond tensors and plain containers; it was not loaded."""


def safe_torch_load(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with a clear refusal.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UnsafeCheckpointError: the file needs arbitrary unpickling (it names classes or functions that
            ``weights_only`` does not allow); nothing of it was executed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler stops at the first global it does not allow, before calling it.
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it contains pickled Python objects other than tensors and plain "
            f"containers, and unpickling them could run arbitrary code ({first_line}). If you trust this file, "
            f"convert it once in a trusted environment with `grounding export {path} --out DIR --allow-pickle` "
            "and predict from DIR (safetensors + config.yaml, nothing unpickled).") from None


def checkpoint_model_state(checkpoint: Mapping[str, Any], path: str | Path) -> tuple[dict[str, torch.Tensor],
                                                                                     list[str]]:
    """The network's state dict (``model.`` prefix stripped) and the exempt prefixes of a Lightning checkpoint.

    Exempt prefixes (frozen text encoders, see ``GroundingTask.on_save_checkpoint``) are returned relative to
    the network too, e.g. ``["text_encoder."]``; their weights are rebuilt from the config at load time.
    """
    state = checkpoint.get("state_dict") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: not a Lightning checkpoint of this toolkit (no 'state_dict' mapping)")
    out = {k[len(MODEL_PREFIX):]: v for k, v in state.items()
           if k.startswith(MODEL_PREFIX) and isinstance(v, torch.Tensor)}
    if not out:
        raise ValueError(f"{path}: its state_dict has no '{MODEL_PREFIX}*' tensors (expected a GroundingTask "
                         "checkpoint)")
    exempt = [p[len(MODEL_PREFIX):] for p in checkpoint.get("exempt_prefixes", ()) if p.startswith(MODEL_PREFIX)]
    return out, exempt


def find_run_config(checkpoint: str | Path) -> Path:
    """The ``config.yaml`` of the run that wrote ``checkpoint``.

    ``grounding train`` writes ``<run_dir>/config.yaml`` and ``<run_dir>/checkpoints/*.ckpt``; a checkpoint moved
    next to its config is found too.
    """
    checkpoint = Path(checkpoint).resolve()
    for candidate in (checkpoint.parent / CONFIG_FILE, checkpoint.parent.parent / CONFIG_FILE):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no {CONFIG_FILE} found for {checkpoint}: expected it in the run directory "
                            f"({checkpoint.parent.parent}) or beside the checkpoint; pass the run's config "
                            "explicitly (--config)")


def iter_targets(node: Any, where: str = "") -> list[tuple[str, str]]:
    """``(config path, target)`` of every ``_target_`` below ``node`` (a container of a DictConfig or a dict)."""
    found: list[tuple[str, str]] = []
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_":
                found.append((where or "<root>", str(value)))
            else:
                found += iter_targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            found += iter_targets(value, f"{where}[{i}]")
    return found


def check_targets(cfg: DictConfig, keys: tuple[str, ...], source: str | Path) -> None:
    """Refuse ``_target_`` values outside :data:`ALLOWED_TARGET_PREFIXES` in the subtrees ``keys`` of ``cfg``."""
    for key in keys:
        node = OmegaConf.select(cfg, key)
        if node is None:
            continue
        plain = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        for where, target in iter_targets(plain, key):
            if not target.startswith(ALLOWED_TARGET_PREFIXES):
                raise ValueError(f"{source}: {where}._target_ is {target!r}; a prediction config may only build "
                                 f"objects of {', '.join(ALLOWED_TARGET_PREFIXES)}")


def read_config(path: str | Path) -> DictConfig:
    """Load a run config (YAML, safe loader); it must have ``model.net`` (the network to build)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {path} does not exist")
    cfg = OmegaConf.load(path)
    if not isinstance(cfg, DictConfig) or OmegaConf.select(cfg, "model.net") is None:
        raise ValueError(f"{path}: not a run config of this toolkit (no model.net); use the config.yaml that "
                         "`grounding train` wrote into the run directory")
    return cfg


def export_metadata(exempt: list[str], source: str) -> dict[str, str]:
    """String metadata stored in the safetensors header (safetensors allows only str -> str)."""
    return {"format": "grounding-export", "version": "1", "exempt_prefixes": json.dumps(exempt), "source": source}
