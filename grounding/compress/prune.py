"""Score pruning (``prune_persistent`` / ``attn_score_prune``, spec §2.3, §4.7): keep the top-k tokens by score.

Scores come from one of:
- ``"learned"``: a small MLP on the features (LayerNorm → Linear → GELU → Linear → 1 logit), trained
  through a straight-through keep weight (hard 0/1 forward, sigmoid gradient backward; the same
  estimator as TextGuidedTopK), so it learns from the task loss alone;
- ``"keynorm"``: the L2 norm of the metric (``ctx.extras["metric"]`` / ``["keys"]``, else the features);
  no parameters;
- ``"extras"``: precomputed (B, N) scores in ``ctx.extras["scores"]`` (e.g. attention that probe queries
  pay to each token, computed by the ViT without materialising the full map).

Dropped tokens are *carried*: :class:`~grounding.compress.base.CompressionSchedule` (``carry=True``)
keeps the pre-plan features and restore scatters kept outputs into them, so a dropped token comes back
with the features it had when it was dropped (DynamicViT's skip path). Outside a schedule, pass
``carried=tokens.x`` to :meth:`restore`.

Choices where the spec leaves room:
- Budget per group: per window in window scope (floor(ratio · n_w), at least 1: a window is never
  emptied), per sample in global scope; fixed ``k`` overrides ``ratio``; ``ctx.budget`` overrides both.
- Protected tokens are always kept and not counted against the budget; padding is never kept.
- Ties keep the lower token index. ``largest=False`` keeps the lowest scores instead.
"""

from __future__ import annotations

from torch import Tensor, nn

from grounding.compress.base import Budget, CompressContext, Compressor, Plan
from grounding.compress.groups import (
    SCOPES,
    group_layout,
    resolve_groups,
    token_metric,
    topk_selection_plan,
)
from grounding.tokens import TokenSet

__all__ = ["SCORERS", "ScorePrune"]

SCORERS = ("learned", "keynorm", "extras")


class ScorePrune(Compressor):
    """Keep the highest-scoring tokens per group; dropped tokens are carried and scattered back at restore.

    Args:
        ratio: keep ratio of candidate tokens in (0, 1]; 1 keeps everything (identity).
        k: fixed number of candidates kept per group; overrides ``ratio``.
        scorer: "learned", "keynorm" or "extras" (see the module docstring).
        dim: token channels C; required for the learned scorer.
        hidden: hidden width of the learned scorer (default C // 4, at least 8).
        scope: "window", "global" or "auto" (window when the tokens have ``window_id``).
        largest: keep the highest scores (False: the lowest).
        fuse: append one token per sample averaging the dropped tokens (EViT); restore still prefers the
            carried features of dropped tokens.
        temperature: softness of the straight-through weight (backward only); scores are logits or norms.
        mode: "gather" (real removal) or "mask" (in place, differentiable, no speed-up).
        fill: restore value for dropped tokens when nothing is carried and nothing is fused.
    """

    def __init__(
        self,
        ratio: float | None = 0.5,
        k: int | None = None,
        scorer: str = "learned",
        dim: int | None = None,
        hidden: int | None = None,
        scope: str = "auto",
        largest: bool = True,
        fuse: bool = False,
        temperature: float = 1.0,
        mode: str = "gather",
        fill: float = 0.0,
    ) -> None:
        super().__init__(mode, fill)
        if scorer not in SCORERS:
            raise ValueError(f"ScorePrune.scorer must be one of {SCORERS}, got {scorer!r}")
        if scope not in SCOPES:
            raise ValueError(f"ScorePrune.scope must be one of {SCOPES}, got {scope!r}")
        if temperature <= 0:
            raise ValueError(f"ScorePrune.temperature must be > 0, got {temperature}")
        self.budget = Budget(ratio=None if k is not None else ratio, k=k)
        self.scorer, self.scope, self.largest, self.fuse = scorer, scope, largest, fuse
        self.temperature = temperature
        self.mlp: nn.Module | None = None
        if scorer == "learned":
            if dim is None:
                raise ValueError("ScorePrune(scorer='learned') needs dim (token channels C)")
            hid = hidden or max(8, dim // 4)
            self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hid), nn.GELU(), nn.Linear(hid, 1))

    def extra_repr(self) -> str:
        return f"budget={self.budget}, scorer={self.scorer!r}, scope={self.scope!r}, mode={self.mode!r}"

    def scores(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Tensor:
        """(B, N) float32 scores of the tokens (higher = more important when ``largest``)."""
        b, n = tokens.valid.shape
        if self.scorer == "learned":
            assert self.mlp is not None
            return self.mlp(tokens.x).squeeze(-1).float()
        if self.scorer == "keynorm":
            return token_metric(tokens, ctx).float().norm(dim=-1)
        s = (ctx.extras if ctx is not None else {}).get("scores")
        if s is None or s.shape != (b, n):
            got = None if s is None else tuple(s.shape)
            raise ValueError(
                f"ScorePrune(scorer='extras') needs CompressContext.extras['scores'] (B, N) = {(b, n)}, got {got}"
            )
        return s.float()

    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Plan:
        """Rank candidates per group and keep the budget's top k; ``Plan.scores`` = scores (0 on padding)."""
        mode = self.resolve_mode(ctx)
        budget = (ctx.budget if ctx is not None else None) or self.budget
        scores = self.scores(tokens, ctx)
        signed = scores if self.largest else -scores
        layout = group_layout(tokens.valid & ~tokens.protect, resolve_groups(tokens, self.scope))
        k = budget.keep_counts(layout.count.flatten()).reshape(layout.count.shape)
        return topk_selection_plan(tokens, signed, layout, k, mode, fuse=self.fuse, temperature=self.temperature,
                                   straight_through=True, scores=scores, ctx=ctx)
