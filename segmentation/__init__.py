"""Image side: SAM with deep instruction tuning (E-DIT, L-DIT) and 2D mask rendering.

Names are resolved lazily (PEP 562), so ``import segmentation`` does not import torch and segment_anything
until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from segmentation.criterion import DITCriterion
    from segmentation.dit import DIT, DITOutputs, TextInjection
    from segmentation.mask_decoder import BatchedMaskDecoder, build_sam_mask_decoder, build_sam_prompt_encoder
    from segmentation.postprocess import DITPostprocess, RISPrediction

_EXPORTS = {
    "DIT": "segmentation.dit",
    "DITOutputs": "segmentation.dit",
    "TextInjection": "segmentation.dit",
    "DITCriterion": "segmentation.criterion",
    "DITPostprocess": "segmentation.postprocess",
    "RISPrediction": "segmentation.postprocess",
    "BatchedMaskDecoder": "segmentation.mask_decoder",
    "build_sam_mask_decoder": "segmentation.mask_decoder",
    "build_sam_prompt_encoder": "segmentation.mask_decoder",
}
__all__ = [
    "BatchedMaskDecoder",
    "DIT",
    "DITCriterion",
    "DITOutputs",
    "DITPostprocess",
    "RISPrediction",
    "TextInjection",
    "build_sam_mask_decoder",
    "build_sam_prompt_encoder",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segmentation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
