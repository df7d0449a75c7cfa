"""build_compressor: every registered name builds, unknown names fail with the known list."""

from __future__ import annotations

import pytest
import torch

from grounding.compress import (
    COMPRESSOR_REGISTRY,
    Identity,
    QueryPool,
    ScorePrune,
    TextGuidedTopK,
    TokenMerge,
    build_compressor,
    register_compressor,
)
from grounding.tokens import TokenSet


def test_names_build_their_classes() -> None:
    assert isinstance(build_compressor("none"), Identity)
    assert isinstance(build_compressor("text_topk", k=4), TextGuidedTopK)
    tome = build_compressor("tome", ratio=0.5, mode="mask")
    assert isinstance(tome, TokenMerge) and tome.ratio == 0.5 and tome.mode == "mask"
    assert isinstance(build_compressor("prune", scorer="keynorm"), ScorePrune)
    pool = build_compressor("pool", dim=8, num_queries=4)
    assert isinstance(pool, QueryPool) and pool.queries.shape == (4, 8)
    ts = TokenSet.from_grid(torch.randn(1, 4, 4, 8))
    assert build_compressor("tome", r=3)(ts)[0].num_tokens.tolist() == [13]


def test_unknown_name_and_registration() -> None:
    with pytest.raises(ValueError, match="unknown compressor 'tomee'.*'tome'"):
        build_compressor("tomee")
    with pytest.raises(TypeError):
        register_compressor("bad", dict)  # type: ignore[arg-type]
    register_compressor("merge_test_alias", TokenMerge)
    try:
        assert isinstance(build_compressor("merge_test_alias"), TokenMerge)
    finally:
        del COMPRESSOR_REGISTRY["merge_test_alias"]
