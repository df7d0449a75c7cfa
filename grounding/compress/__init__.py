"""Token compressors that plan, apply and restore on a :class:`~grounding.tokens.TokenSet`.

Public API:
- :class:`Compressor` (``plan`` / ``apply`` / ``restore``), :class:`Plan`, :class:`CompressContext`,
  :class:`Budget`; :func:`apply_plan`, :func:`restore_plan`, :func:`build_selection_plan` for new plugins.
- :class:`CompressionSchedule`: compressors per block, restored in reverse order.
- :class:`Identity` (no compression) and :class:`TextGuidedTopK` (``text_select``).
- :class:`TokenMerge` (ToMe bipartite merging, ``tome``) and :func:`proportional_attention_bias`.
- :class:`ScorePrune` (learned / key-norm / given-score pruning, ``prune``).
- :class:`QueryPool` (learned query pooling, ``pool``) and its :class:`PoolPlan`.
- :func:`group_layout` (tokens packed per window / sample) and :func:`build_compressor` (by name).

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
from grounding.compress.groups import GroupLayout, group_layout
from grounding.compress.pool import PoolPlan, QueryPool
from grounding.compress.prune import ScorePrune
from grounding.compress.registry import COMPRESSOR_REGISTRY, build_compressor, register_compressor
from grounding.compress.text_select import TextGuidedTopK, text_similarity
from grounding.compress.tome import TokenMerge, proportional_attention_bias

__all__ = [
    "COMPRESSOR_REGISTRY",
    "MODES",
    "Budget",
    "CompressContext",
    "CompressionSchedule",
    "Compressor",
    "GroupLayout",
    "Identity",
    "Plan",
    "PoolPlan",
    "QueryPool",
    "ScorePrune",
    "StackEntry",
    "TextGuidedTopK",
    "TokenMerge",
    "apply_plan",
    "build_compressor",
    "build_selection_plan",
    "group_layout",
    "proportional_attention_bias",
    "register_compressor",
    "restore_plan",
    "text_similarity",
]
