"""Text side: a Hugging Face encoder with word pooling, and a dependency parser with target-word rules.

Names are resolved lazily (PEP 562), so that ``import grounding.text.parser`` (used by data preparation)
does not import torch and transformers, and ``import grounding.text`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from grounding.text.encoder import TextEncoder, TextFeatures, default_minilm_path
    from grounding.text.parser import DEPENDENCY_LABELS, DependencyParser, Parse, label_id
    from grounding.text.target_word import select_target

_EXPORTS = {
    "TextEncoder": "grounding.text.encoder",
    "TextFeatures": "grounding.text.encoder",
    "default_minilm_path": "grounding.text.encoder",
    "DependencyParser": "grounding.text.parser",
    "Parse": "grounding.text.parser",
    "DEPENDENCY_LABELS": "grounding.text.parser",
    "label_id": "grounding.text.parser",
    "select_target": "grounding.text.target_word",
}
__all__ = [
    "DEPENDENCY_LABELS",
    "DependencyParser",
    "Parse",
    "TextEncoder",
    "TextFeatures",
    "default_minilm_path",
    "label_id",
    "select_target",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'grounding.text' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
