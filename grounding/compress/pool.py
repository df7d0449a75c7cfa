"""Learned query pooling (``query_pool``, spec §2.4, §4.7): M learned queries cross-attend over the tokens.

Each query attends (multi-head) over the valid, unprotected tokens of its group and returns
``query + out_proj(attention · values)`` (Perceiver / Q-Former style): M tokens per group stand for the
whole set. Meant for the head side (e.g. on the neck output), where it saves the consumer's cost only.
Groups: "global" pools the whole sample into M tokens; "window" pools every ``window_id`` window into M
tokens, which with k×k windows and M = 1 is FlashSloth's SAP region pooling (729 → 81 tokens there).
Protected tokens are not pooled: they pass through as their own slots.

Layout: **gather**: the protected tokens (ascending order), then G·M query slots; **mask**: the N rows in
place, all but the protected ones invalid, then the G·M query slots (base.py's "extra slots follow" rule).
Both modes compute the same pooled values and are differentiable.

Restore (spec §4.3 "broadcast a fused token to the tokens it absorbed", made soft): every pooled token
n gets Σ_m w[n, m] · y_m with w[n, m] = Ā[m, n] / Σ_m' Ā[m', n], Ā the head-averaged attention: the
outputs of the queries that read the token, in proportion to how much each read it. Protected tokens get
their own slot back. Carried features are used only for padding (and for integer tensors): no valid
token was skipped, every one feeds the pooled output, so restoring its pre-pool value would discard
the work done on the pooled set.

Bookkeeping: a token is *hard*-assigned to the query that reads it most (``src_index``, ``size`` sums,
:meth:`TokenSet.dense`, which therefore gives the hard broadcast); a query slot's representative (its grid
cell, window, ``pos`` for grids) is the token it reads most; float positions (superpoint centroids) are
the attention-weighted mean. A query whose group has tokens is valid even if no token is hard-assigned
to it (size 0).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from grounding.compress.base import CompressContext, Compressor, Plan, apply_plan, build_selection_plan, restore_plan
from grounding.compress.groups import SCOPES, GroupLayout, group_layout, resolve_groups
from grounding.tokens import TokenSet, batched_gather

__all__ = ["PoolPlan", "QueryPool"]


@dataclass
class PoolPlan(Plan):
    """A :class:`Plan` plus the attention that pooled the tokens.

    Extra fields (G groups, M queries per group, L largest group, H heads):
        attn: (B, H, G, M, L) float, each query's attention over its group's members (0 on padding).
        layout: the group layout of the pooled (valid, unprotected) tokens.
        offset: index of the first query slot (kept protected tokens come first in gather mode; N in mask).
    """

    attn: Tensor | None = None
    layout: GroupLayout | None = None
    offset: int = 0

    @property
    def mix(self) -> Tensor:
        """(B, G, M, L) head-averaged attention."""
        assert self.attn is not None
        return self.attn.mean(dim=1)


class QueryPool(Compressor):
    """Pool every group's tokens into ``num_queries`` tokens with learned cross-attention queries.

    Args:
        dim: token channels C (also the queries' width).
        num_queries: M, queries per group.
        num_heads: attention heads (C must divide by it).
        scope: "global" (M tokens per sample), "window" (M per window) or "auto" (window when present).
        proportional: add log(size) of each token to the attention logits (ToMe's proportional attention),
            so a merged token is read as often as its units.
        mode: "gather" (query slots only, plus protected tokens) or "mask" (N invalid rows, then the queries).
        fill: restore value for padding when nothing is carried.
    """

    def __init__(
        self,
        dim: int,
        num_queries: int = 16,
        num_heads: int = 4,
        scope: str = "global",
        proportional: bool = False,
        mode: str = "gather",
        fill: float = 0.0,
    ) -> None:
        super().__init__(mode, fill)
        if dim % num_heads != 0:
            raise ValueError(f"QueryPool: dim {dim} must be divisible by num_heads {num_heads}")
        if num_queries < 1:
            raise ValueError(f"QueryPool.num_queries must be >= 1, got {num_queries}")
        if scope not in SCOPES:
            raise ValueError(f"QueryPool.scope must be one of {SCOPES}, got {scope!r}")
        self.dim, self.num_queries, self.num_heads = dim, num_queries, num_heads
        self.scope, self.proportional = scope, proportional
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.norm = nn.LayerNorm(dim)
        self.q_proj, self.k_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def extra_repr(self) -> str:
        return f"queries={self.num_queries}, heads={self.num_heads}, scope={self.scope!r}, mode={self.mode!r}"

    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> PoolPlan:
        """Attention of every query over its group, hard assignments and slot layout (``ctx.budget`` unused).

        ``Plan.scores`` holds the attention each token receives, summed over its group's queries.
        """
        if tokens.x.shape[-1] != self.dim:
            raise ValueError(f"QueryPool: tokens.x {tuple(tokens.x.shape)} must have C = dim = {self.dim}")
        mode = self.resolve_mode(ctx)
        block = ctx.block if ctx is not None else 0
        b, n = tokens.valid.shape
        layout = group_layout(tokens.valid & ~tokens.protect, resolve_groups(tokens, self.scope))
        sel = build_selection_plan(tokens, tokens.protect & tokens.valid, mode, block=block)
        attn = self._attention(tokens, layout)
        mix = attn.detach().mean(dim=1)  # the discrete bookkeeping needs no gradient
        g, m = layout.num_groups, self.num_queries
        offset = sel.rep_index.shape[1]
        first_slot = offset + torch.arange(g, device=mix.device).reshape(1, g, 1) * m
        assign = layout.scatter(first_slot + mix.argmax(dim=2), sel.assign)
        rep_q = layout.index.gather(-1, mix.argmax(dim=-1)).reshape(b, g * m)
        q_valid = (layout.count > 0).unsqueeze(-1).expand(b, g, m).reshape(b, g * m)
        received = layout.scatter(mix.sum(dim=2), torch.zeros(b, n, device=mix.device))
        return PoolPlan(
            mode=mode,
            n_before=n,
            keep_mask=sel.keep_mask,
            kept_index=sel.kept_index,
            kept_valid=sel.kept_valid,
            assign=assign,
            direct=sel.keep_mask,
            rep_index=torch.cat([sel.rep_index, rep_q], dim=1),
            slot_valid=torch.cat([sel.slot_valid, q_valid], dim=1),
            weight=tokens.size,
            merges=True,
            scores=received,
            block=block,
            attn=attn,
            layout=layout,
            offset=offset,
        )

    def _attention(self, tokens: TokenSet, layout: GroupLayout) -> Tensor:
        """(B, H, G, M, L) softmax over each group's members; exactly 0 on padding and in empty groups."""
        b, g, l = layout.index.shape
        h, d = self.num_heads, self.dim // self.num_heads
        k = self.k_proj(self.norm(layout.gather(tokens.x))).reshape(b, g, l, h, d)
        q = self.q_proj(self.queries).reshape(self.num_queries, h, d)
        logits = torch.einsum("mhd,bglhd->bhgml", q, k) * d**-0.5
        if self.proportional:
            size = layout.gather(tokens.size.unsqueeze(-1)).squeeze(-1).float()
            logits = logits + size.clamp_min(torch.finfo(torch.float32).tiny).log()[:, None, :, None, :]
        member = layout.valid[:, None, :, None, :]
        # A finite fill (not -inf) keeps empty groups free of NaN, which would poison the backward pass.
        logits = logits.masked_fill(~member, torch.finfo(logits.dtype).min)
        return logits.softmax(dim=-1) * member

    def _pool_features(self, plan: PoolPlan, x: Tensor) -> Tensor:
        """Cross-attention output of the queries: (B, G·M, C)."""
        assert plan.layout is not None and plan.attn is not None
        b, g, l = plan.layout.index.shape
        h, d = self.num_heads, self.dim // self.num_heads
        v = self.v_proj(self.norm(plan.layout.gather(x))).reshape(b, g, l, h, d)
        out = torch.einsum("bhgml,bglhd->bgmhd", plan.attn.to(v.dtype), v).reshape(b, g, self.num_queries, self.dim)
        return (self.out_proj(out) + self.queries).reshape(b, g * self.num_queries, self.dim)

    @staticmethod
    def mix_tensor(plan: PoolPlan, t: Tensor) -> Tensor:
        """Head-averaged attention mixture of an aligned float tensor (B, N, *) -> (B, G·M, *)."""
        assert plan.layout is not None
        tg = plan.layout.gather(t).float()
        b, g, l = plan.layout.index.shape
        out = plan.mix @ tg.reshape(b, g, l, -1)
        return out.reshape(b, -1, *t.shape[2:]).to(t.dtype)

    @staticmethod
    def _join(plan: PoolPlan, slots: Tensor, pooled: Tensor, zero_invalid: bool) -> Tensor:
        """Kept-token slots (B, ≥offset, *) + pooled query slots (B, G·M, *) -> (B, S, *)."""
        out = torch.cat([slots[:, : plan.offset], pooled.to(slots.dtype)], dim=1)
        if zero_invalid:
            keep = plan.slot_valid.reshape(*plan.slot_valid.shape, *([1] * (out.dim() - 2)))
            out = torch.where(keep, out, torch.zeros((), dtype=out.dtype, device=out.device))
        return out

    def apply(self, plan: Any, target: Tensor | TokenSet | None = None) -> Any:  # type: ignore[override]
        """Pool a TokenSet (features by cross-attention) or an aligned tensor (head-averaged mixture).

        Integer tensors (grid positions) take the representative token's value.
        """
        if target is None and callable(plan) and not isinstance(plan, Plan):
            return nn.Module.apply(self, plan)
        if not isinstance(plan, PoolPlan):
            raise TypeError(f"QueryPool.apply needs the PoolPlan from QueryPool.plan, got {type(plan).__name__}")
        if target is None:
            raise TypeError("apply(plan, target): target is missing")
        if isinstance(target, TokenSet):
            base = apply_plan(plan, target)  # sizes, src_index, protect, window_id, grid cells
            x = self._join(plan, base.x, self._pool_features(plan, target.x), zero_invalid=True)
            pos = base.pos
            if pos.is_floating_point():
                pos = self._join(plan, base.pos, self.mix_tensor(plan, target.pos), zero_invalid=False)
            score = None if target.score is None else self._join(
                plan, base.score, self.mix_tensor(plan, target.score), zero_invalid=False
            )
            return replace(base, x=x, pos=pos, score=score)
        if not target.is_floating_point():
            return batched_gather(target, plan.rep_index)
        slots = batched_gather(target, plan.rep_index[:, : plan.offset])
        return self._join(plan, slots, self.mix_tensor(plan, target), zero_invalid=True)

    def restore(
        self, plan: Plan, tensor: Tensor, carried: Tensor | None = None, fill: float | None = None
    ) -> Tensor:
        """(B, S, *) -> (B, N, *): soft broadcast of the query outputs (see the module docstring)."""
        if not isinstance(plan, PoolPlan) or plan.layout is None:
            raise TypeError(f"QueryPool.restore needs the PoolPlan from QueryPool.plan, got {type(plan).__name__}")
        out = restore_plan(plan, tensor, carried, self.fill if fill is None else fill)
        if not tensor.is_floating_point():
            return out
        b, g, l = plan.layout.index.shape
        mix = plan.mix
        w = mix / mix.sum(dim=2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        yq = tensor[:, plan.offset :].reshape(b, g, self.num_queries, -1)
        soft = torch.einsum("bgml,bgmf->bglf", w.to(yq.dtype), yq).reshape(b, g, l, *tensor.shape[2:])
        return plan.layout.scatter(soft, out)
