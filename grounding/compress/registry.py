"""Build a compressor from a short name and keyword arguments (benchmarks, sweeps, command-line options).

Configs keep using hydra ``_target_`` (``configs/compress/*.yaml``); this table is the programmatic
equivalent for code that picks compressors by name, e.g. ``build_compressor("tome", ratio=0.5)``.
"""

from __future__ import annotations

from typing import Any

from grounding.compress.base import Compressor, Identity
from grounding.compress.pool import QueryPool
from grounding.compress.prune import ScorePrune
from grounding.compress.text_select import TextGuidedTopK
from grounding.compress.tome import TokenMerge

__all__ = ["COMPRESSOR_REGISTRY", "build_compressor", "register_compressor"]

COMPRESSOR_REGISTRY: dict[str, type[Compressor]] = {
    "none": Identity,
    "text_topk": TextGuidedTopK,
    "text_select": TextGuidedTopK,  # the spec's plugin name (§4.7)
    "tome": TokenMerge,
    "prune": ScorePrune,
    "pool": QueryPool,
}


def register_compressor(name: str, cls: type[Compressor]) -> None:
    """Add (or replace) a name in the registry."""
    if not (isinstance(cls, type) and issubclass(cls, Compressor)):
        raise TypeError(f"register_compressor: {cls!r} is not a Compressor subclass")
    COMPRESSOR_REGISTRY[name] = cls


def build_compressor(name: str, **kwargs: Any) -> Compressor:
    """Instantiate the compressor registered under ``name`` with ``kwargs`` (its constructor arguments)."""
    try:
        cls = COMPRESSOR_REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"build_compressor: unknown compressor {name!r}; known: {sorted(COMPRESSOR_REGISTRY)}"
        ) from None
    return cls(**kwargs)
