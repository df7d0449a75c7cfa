"""Token compressors that plan, apply and restore on a :class:`~grounding.tokens.TokenSet`.

Public API:
- :class:`Compressor` (``plan`` / ``apply`` / ``restore``), :class:`Plan`, :class:`CompressContext`,
  :class:`Budget`; :func:`apply_plan`, :func:`restore_plan`, :func:`build_selection_plan` for new plugins.
- :class:`CompressionSchedule`: compressors per block, restored in reverse order.
- :class:`Identity` (no compression) and :class:`TextGuidedTopK` (``text_select``).

Configs in ``configs/compress/`` instantiate these with hydra ``_target_``.
"""

from grounding.compress.base import (
    MODES,
    Budget,
    CompressContext,
    CompressionSchedule,
    Compressor,
    Identity,
    Plan,
    StackEntry,
    apply_plan,
    build_selection_plan,
    restore_plan,
)
from grounding.compress.text_select import TextGuidedTopK, text_similarity

__all__ = [
    "MODES",
    "Budget",
    "CompressContext",
    "CompressionSchedule",
    "Compressor",
    "Identity",
    "Plan",
    "StackEntry",
    "TextGuidedTopK",
    "apply_plan",
    "build_selection_plan",
    "restore_plan",
    "text_similarity",
]
