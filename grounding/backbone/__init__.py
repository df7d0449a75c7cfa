"""The common vision backbone: SAM's ViT encoder with text slots, and official SAM checkpoint loading.

Names are resolved lazily (PEP 562) so that ``import grounding.backbone`` does not import torch and
segment_anything until a name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from grounding.backbone.checkpoint import (
        SAM_PREFIXES,
        SamCheckpointError,
        SamLoadReport,
        load_sam_weights,
        read_sam_state_dict,
    )
    from grounding.backbone.compression import BackboneCompression, BlockTrace
    from grounding.backbone.flops import encoder_flops
    from grounding.backbone.sam_vit import SAM_VIT_PRESETS, TextAwareViT, TextHook

_EXPORTS = {
    "BackboneCompression": "grounding.backbone.compression",
    "BlockTrace": "grounding.backbone.compression",
    "encoder_flops": "grounding.backbone.flops",
    "SAM_VIT_PRESETS": "grounding.backbone.sam_vit",
    "TextAwareViT": "grounding.backbone.sam_vit",
    "TextHook": "grounding.backbone.sam_vit",
    "SAM_PREFIXES": "grounding.backbone.checkpoint",
    "SamCheckpointError": "grounding.backbone.checkpoint",
    "SamLoadReport": "grounding.backbone.checkpoint",
    "load_sam_weights": "grounding.backbone.checkpoint",
    "read_sam_state_dict": "grounding.backbone.checkpoint",
}
__all__ = [
    "BackboneCompression",
    "BlockTrace",
    "encoder_flops",
    "SAM_PREFIXES",
    "SAM_VIT_PRESETS",
    "SamCheckpointError",
    "SamLoadReport",
    "TextAwareViT",
    "TextHook",
    "load_sam_weights",
    "read_sam_state_dict",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounding.backbone' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
