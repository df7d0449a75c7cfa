"""Text-guided top-k token selection (``text_select``, spec token-compression §4.7–4.9).

Each token is scored by its cosine similarity to the text: to the sentence feature (B, C), or the best
match over the valid text tokens (B, T, C) (a token relevant to any word is relevant). The top-k
candidates are kept; optionally everything else is fused into one extra token (EViT, 3D-STMN's global
key) so the consumer still sees a summary of the dropped context. It is meant for the head side (after
the shared backbone): selection is per description, so it saves the consumer's cost only.

Choices where the spec leaves room:
- Budget: fixed ``k`` takes precedence over ``ratio``; a ratio keeps floor(ratio · n_candidates) with a
  floor of 1 (§4.5).
- Protected tokens (DIT text slots, registers) are always kept and **not counted** against the budget:
  the budget counts candidates = valid and unprotected tokens, so ratio 0.5 keeps half the image tokens.
- Padding tokens are never candidates, so they can never be kept over valid tokens.
- Ties are broken by token index (stable sort): equal scores keep the lower index.
- Differentiable path: the hard 0/1 keep mask is used forward; backward uses the gradient of
  sigmoid((score − τ) / temperature), τ halfway between the k-th and (k+1)-th candidate scores
  (straight-through estimator). Features of kept tokens are multiplied by this weight (exactly 1
  forward), so gradients reach the token and text features (and the projection) through the scores.
  It is active whenever autograd records the scores, in mask mode (the training mode) and gather mode.
- ``score_fn="softmax_sum"`` is MDIN's sampler score (superpoint seeds against words): it ranks seeds by
  how much of each word's attention they receive; it also serves superpoint TokenSets for 3D heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grounding.compress.base import Budget, CompressContext, Compressor, Plan
from grounding.compress.groups import group_layout, topk_selection_plan
from grounding.tokens import TokenSet

__all__ = ["SCORE_FNS", "TextGuidedTopK", "text_similarity"]

SCORE_FNS = ("cosine", "softmax_sum")


def text_similarity(x: Tensor, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
    """Cosine similarity of tokens to text, in float32.

    Args:
        x: (B, N, C) token features.
        text: (B, C) sentence features, or (B, T, C) text-token features.
        text_mask: (B, T) bool, True for real text tokens; only with (B, T, C) text. Default: all real.
    Returns:
        (B, N) scores in [-1, 1]; for (B, T, C) text, the max over real text tokens.
    """
    xn = F.normalize(x.float(), dim=-1)
    tn = F.normalize(text.float(), dim=-1)
    if text.dim() == 2:
        return torch.einsum("bnc,bc->bn", xn, tn)
    sim = torch.einsum("bnc,btc->bnt", xn, tn)
    if text_mask is None:
        return sim.amax(dim=-1)
    if text_mask.shape != text.shape[:2]:
        raise ValueError(f"text_mask {tuple(text_mask.shape)} must be (B, T) = {tuple(text.shape[:2])}")
    empty = ~text_mask.bool().any(dim=1)
    if bool(empty.any()):
        raise ValueError(f"text_mask: samples {empty.nonzero().flatten().tolist()} have no real text token")
    return sim.masked_fill(~text_mask.bool().unsqueeze(1), float("-inf")).amax(dim=-1)


class TextGuidedTopK(Compressor):
    """Keep the k tokens most similar to the text (plus protected tokens, plus an optional fused token).

    Args:
        ratio: keep ratio of candidate tokens in (0, 1]; 1 keeps everything (identity).
        k: fixed number of candidates to keep; overrides ``ratio`` when given.
        mode: "gather" (real removal, for speed) or "mask" (in place, for training).
        fuse: append one token per sample: the size-weighted mean of the dropped valid tokens; its size
            is their summed size and their ``src_index`` points at it.
        temperature: softness of the straight-through keep weight (backward pass only).
        text_dim, token_dim: give both to project text features (text_dim) into the token space
            (token_dim) with a learned bias-free Linear before scoring.
        fill: restore value for dropped tokens when nothing is carried and nothing is fused.
        score_fn: ``"cosine"`` (above) or ``"softmax_sum"``, MDIN's text-driven sampler (rgsan-mdin spec §6.2):
            softmax over the tokens of each word's scaled dot products, summed over words
            (:meth:`score_terms`); needs ``text_dim``, ``token_dim`` and ``score_dim``.
        score_dim: width both sides are projected to for ``softmax_sum``.
        straight_through: the differentiable keep weight; False keeps the selection hard in both passes
            (MDIN trains its sampler with its own loss only).
    """

    def __init__(
        self,
        ratio: float | None = 0.5,
        k: int | None = None,
        mode: str = "gather",
        fuse: bool = False,
        temperature: float = 0.05,
        text_dim: int | None = None,
        token_dim: int | None = None,
        fill: float = 0.0,
        score_fn: str = "cosine",
        score_dim: int | None = None,
        straight_through: bool = True,
    ) -> None:
        super().__init__(mode, fill)
        self.budget = Budget(ratio=None if k is not None else ratio, k=k)
        self.fuse = fuse
        if temperature <= 0:
            raise ValueError(f"TextGuidedTopK.temperature must be > 0, got {temperature}")
        self.temperature = temperature
        if score_fn not in SCORE_FNS:
            raise ValueError(f"TextGuidedTopK.score_fn must be one of {SCORE_FNS}, got {score_fn!r}")
        self.score_fn = score_fn
        self.straight_through = straight_through
        if (text_dim is None) != (token_dim is None):
            raise ValueError("TextGuidedTopK: give both text_dim and token_dim for a projection, or neither")
        self.proj: nn.Linear | None = None
        self.token_proj: nn.Linear | None = None
        if score_fn == "softmax_sum":
            if text_dim is None or score_dim is None:
                raise ValueError("TextGuidedTopK(score_fn='softmax_sum') needs text_dim, token_dim and score_dim: "
                                 "tokens and words are each projected to score_dim without bias")
            self.proj = nn.Linear(text_dim, score_dim, bias=False)
            self.token_proj = nn.Linear(token_dim, score_dim, bias=False)
        elif text_dim is not None:
            self.proj = nn.Linear(text_dim, token_dim, bias=False)

    def extra_repr(self) -> str:
        return f"budget={self.budget}, mode={self.mode!r}, fuse={self.fuse}, score_fn={self.score_fn!r}"

    def score_terms(self, tokens: TokenSet, text: Tensor, text_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``score_fn="softmax_sum"`` (MDIN's sampler, rgsan-mdin spec §6.2 step 3): (B, N) scores and logits.

        Tokens and words are projected to ``score_dim`` without bias; ``a[b, n, t] = <x_n, w_t> / sqrt(score_dim)``;
        the score is ``softmax over the valid tokens n`` of ``a``, zeroed on padded words and summed over words,
        in [0, #words]. The logit is ``max over valid words of a``: a real logit for a sigmoid loss (the original
        feeds the non-negative score to a focal loss, whose sigmoid is then >= 0.5 always: spec D2). Both are
        float32; padding tokens get score 0 and logit -1e4.
        """
        if self.token_proj is None or self.proj is None:
            raise ValueError("TextGuidedTopK.score_terms is the softmax_sum score; build with score_fn='softmax_sum'")
        x = tokens.x
        if text.dim() != 3 or text.shape[0] != x.shape[0]:
            raise ValueError(f"TextGuidedTopK(softmax_sum): text must be (B, T, C) with B = {x.shape[0]}, "
                             f"got {tuple(text.shape)}")
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device) if text_mask is None else text_mask
        if mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask {tuple(mask.shape)} must be (B, T) = {tuple(text.shape[:2])}")
        k = self.token_proj(x).float()
        w = self.proj(text).float()
        a = torch.einsum("bnc,btc->bnt", k, w) / (k.shape[-1] ** 0.5)  # (B, N, T)
        valid = tokens.valid
        # Softmax over the token axis; a sample without valid tokens gets zeros instead of NaN.
        prob = torch.softmax(a.masked_fill(~valid[:, :, None], float("-inf")), dim=1).nan_to_num(0.0)
        scores = (prob * mask[:, None, :].float()).sum(-1)
        logits = a.masked_fill(~mask[:, None, :].bool(), float("-inf")).amax(-1)
        return scores.masked_fill(~valid, 0.0), logits.masked_fill(~valid, -1e4)

    def scores(self, tokens: TokenSet, text: Tensor, text_mask: Tensor | None = None) -> Tensor:
        """(B, N) float32 cosine scores of ``tokens.x`` (B, N, C) against ``text`` (B, C) or (B, T, C)
        (``score_fn="cosine"``), or the softmax-sum scores of :meth:`score_terms`."""
        if self.score_fn == "softmax_sum":
            return self.score_terms(tokens, text, text_mask)[0]
        x = tokens.x
        if text.dim() not in (2, 3) or text.shape[0] != x.shape[0]:
            raise ValueError(
                f"TextGuidedTopK: text must be (B, C) or (B, T, C) with B = {x.shape[0]}, "
                f"got {tuple(text.shape)}"
            )
        if self.proj is not None:
            if text.shape[-1] != self.proj.in_features:
                raise ValueError(
                    f"TextGuidedTopK: text features {tuple(text.shape)} have C={text.shape[-1]} but the "
                    f"projection expects text_dim={self.proj.in_features}"
                )
            text = self.proj(text)
        if text.shape[-1] != x.shape[-1]:
            hint = (
                "token_dim of the projection"
                if self.proj is not None
                else "text_dim/token_dim for a projection"
            )
            raise ValueError(
                f"TextGuidedTopK: tokens.x {tuple(x.shape)} has C={x.shape[-1]} but text features "
                f"{tuple(text.shape)} have C={text.shape[-1]}; set {hint}"
            )
        return text_similarity(x, text, text_mask if text.dim() == 3 else None)

    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Plan:
        """Rank candidates by text similarity and keep the budget's top k per sample.

        ``ctx.text`` (and ``ctx.text_mask`` for (B, T, C) text) is required; ``ctx.budget`` and
        ``ctx.mode`` override the compressor's own. ``Plan.scores`` holds the cosine scores (0 on padding).
        """
        if ctx is None or ctx.text is None:
            raise ValueError("TextGuidedTopK.plan needs CompressContext.text: (B, C) or (B, T, C) features")
        return self.plan_from_scores(tokens, self.scores(tokens, ctx.text, ctx.text_mask), ctx)

    def plan_from_scores(self, tokens: TokenSet, scores: Tensor, ctx: CompressContext | None = None) -> Plan:
        """The top-k plan of given (B, N) scores (from :meth:`scores` or :meth:`score_terms`)."""
        budget = (ctx.budget if ctx is not None else None) or self.budget
        mode = self.resolve_mode(ctx)
        # One group per sample: the shared top-k of the pruning compressors (stable: ties keep the lower index).
        layout = group_layout(tokens.valid & ~tokens.protect)
        return topk_selection_plan(tokens, scores, layout, budget.keep_counts(layout.count.flatten()).view(-1, 1),
                                   mode, fuse=self.fuse, temperature=self.temperature,
                                   straight_through=self.straight_through and torch.is_grad_enabled(),
                                   scores=scores, ctx=ctx)
