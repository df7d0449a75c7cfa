"""REC by box retrieval, ChatRex-style: box tokens from the common backbone, a small transformer head that picks a
candidate's index, its loss and its inference (box-retrieval spec §4; docs/retrieval.md).

Names are resolved lazily (PEP 562), so ``import grounding.retrieval`` does not import torch until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from grounding.retrieval.box_tokens import BoxTokenizer, SimplePyramid, sine_box_embedding
    from grounding.retrieval.criterion import RetrievalCriterion
    from grounding.retrieval.head import RetrievalHead
    from grounding.retrieval.model import BoxRetriever, RetrievalOutputs
    from grounding.retrieval.postprocess import BoxPrediction, ImageDetections, RetrievalPostprocess

_EXPORTS = {
    "BoxTokenizer": "grounding.retrieval.box_tokens",
    "SimplePyramid": "grounding.retrieval.box_tokens",
    "sine_box_embedding": "grounding.retrieval.box_tokens",
    "RetrievalCriterion": "grounding.retrieval.criterion",
    "RetrievalHead": "grounding.retrieval.head",
    "BoxRetriever": "grounding.retrieval.model",
    "RetrievalOutputs": "grounding.retrieval.model",
    "BoxPrediction": "grounding.retrieval.postprocess",
    "ImageDetections": "grounding.retrieval.postprocess",
    "RetrievalPostprocess": "grounding.retrieval.postprocess",
}
__all__ = [
    "BoxPrediction",
    "BoxRetriever",
    "BoxTokenizer",
    "ImageDetections",
    "RetrievalCriterion",
    "RetrievalHead",
    "RetrievalOutputs",
    "RetrievalPostprocess",
    "SimplePyramid",
    "sine_box_embedding",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounding.retrieval' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
