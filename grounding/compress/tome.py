"""ToMe-style bipartite soft matching (``tome_local`` / ``tome_global`` / ``tome_set``, spec §2.1, §4.7, §4.9).

Per group (attention window, or the whole sample), the candidate tokens (valid, unprotected) alternate
into sets A (even rank) and B (odd rank) in ascending token order; every A token picks its most similar B
token by cosine similarity of the metric (keys averaged over heads from ``ctx.extras``, else features);
the r most similar edges are merged: each chosen A token is averaged into its B partner with ``size``
weights, so several A tokens may join one B token and B tokens never move (no chains). Merged image
tokens keep the destination's grid cell (§4.6); superpoint centroids are size-weighted averages (§4.9).

Restore is unmerge (ToMe-SD): every source token gets its destination's output back.

Choices where the spec leaves room:
- Budget: ``r`` merges per group (per window in window scope, per sample in global scope) or
  ``ratio`` · candidates (rounded down); never more than half of a group's candidates, so a window is
  never emptied. ``ctx.budget`` (a keep budget) overrides both: r = candidates − keep.
- Superpoints (float ``pos``): a pair may merge only if the centroids are within ``radius`` metres
  (inclusive) and/or one is among the other's ``knn`` nearest candidates (kNN graph made symmetric);
  with both set a pair must pass both. Grid tokens ignore these options.
- Ties: equal similarities pick the lower B index; equal edges merge the lower A rank first.
- Mask mode merges in place: a source's row becomes invalid (zero) and its destination row holds the
  average. The merge itself is an average, so gradients reach both tokens' features; the matching
  (argmax, top-r) is discrete and gets none.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from grounding.compress.base import Budget, CompressContext, Compressor, Plan, build_selection_plan
from grounding.compress.groups import SCOPES, GroupLayout, group_layout, resolve_groups, token_metric
from grounding.tokens import TokenSet, batched_gather

__all__ = ["TokenMerge", "proportional_attention_bias"]


def proportional_attention_bias(tokens: TokenSet, units: bool = False, mask_invalid: bool = True) -> Tensor:
    """ToMe's proportional attention term to add to attention logits: (B, 1, 1, N) float32.

    A key that stands for s original units counts as s keys: log(s) is added to its logit.

    Args:
        tokens: the (possibly merged) tokens used as keys.
        units: count original units (via ``src_index``) instead of ``size``: for superpoints, whose size is a
            point count, this gives log(number of merged superpoints). Same thing for image grids.
        mask_invalid: put -inf on invalid keys (padding, tokens dropped or merged away in mask mode), so the
            bias doubles as the key-padding mask.
    Valid tokens that stand for nothing (size 0: DIT text slots, registers) get 0, i.e. weigh as one key.
    """
    if units:
        src = tokens.src_index
        s = torch.zeros_like(tokens.size).scatter_add_(1, src.clamp(min=0), (src >= 0).to(tokens.size.dtype))
    else:
        s = tokens.size
    s = s.float()
    bias = torch.where(s > 0, s.clamp_min(torch.finfo(torch.float32).tiny).log(), 0.0)
    if mask_invalid:
        bias = bias.masked_fill(~tokens.valid, float("-inf"))
    return bias[:, None, None, :]


class TokenMerge(Compressor):
    """Bipartite soft matching: merge the r most similar (A, B) pairs per group.

    Args:
        ratio: fraction of a group's candidate tokens to merge away, in [0, 0.5]; 0 is the identity.
        r: fixed merges per group; overrides ``ratio`` when given (0 is the identity).
        scope: "window" (merge only inside ``window_id`` windows), "global" (whole sample: before global
            attention, or superpoints) or "auto" (window when the tokens have ``window_id``).
        knn: superpoints only: pairs must be k-nearest neighbours by centroid (None: no kNN rule).
        radius: superpoints only: pairs must be at most this far apart, metres (None: no radius rule).
        mode: "gather" (real removal) or "mask" (in place, differentiable, no speed-up).
        fill: restore value for padding when nothing is carried.
    """

    def __init__(
        self,
        ratio: float = 0.25,
        r: int | None = None,
        scope: str = "auto",
        knn: int | None = 8,
        radius: float | None = None,
        mode: str = "gather",
        fill: float = 0.0,
    ) -> None:
        super().__init__(mode, fill)
        if not 0.0 <= float(ratio) <= 0.5:
            raise ValueError(f"TokenMerge.ratio must be in [0, 0.5] (ToMe merges at most half), got {ratio}")
        if r is not None and r < 0:
            raise ValueError(f"TokenMerge.r must be >= 0, got {r}")
        if knn is not None and knn < 1:
            raise ValueError(f"TokenMerge.knn must be >= 1 or None, got {knn}")
        if radius is not None and radius <= 0:
            raise ValueError(f"TokenMerge.radius must be > 0 or None, got {radius}")
        if scope not in SCOPES:
            raise ValueError(f"TokenMerge.scope must be one of {SCOPES}, got {scope!r}")
        self.ratio, self.r, self.scope, self.knn, self.radius = float(ratio), r, scope, knn, radius

    def extra_repr(self) -> str:
        budget = f"r={self.r}" if self.r is not None else f"ratio={self.ratio}"
        return f"{budget}, scope={self.scope!r}, knn={self.knn}, radius={self.radius}, mode={self.mode!r}"

    def merge_counts(self, count: Tensor, budget: Budget | None = None) -> Tensor:
        """(B, G) candidates per group -> (B, G) merges, capped at half the group (rounded down)."""
        if budget is not None:
            r = count - budget.keep_counts(count.flatten()).reshape(count.shape)
        elif self.r is not None:
            r = torch.full_like(count, self.r)
        else:
            r = torch.floor(count.double() * self.ratio + 1e-9).long()
        return torch.minimum(r.clamp(min=0), count // 2)

    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Plan:
        """Match A to B tokens per group and merge the r best edges.

        ``ctx.extras["metric"]`` (B, N, C') or ``["keys"]`` ((B, N, C') or (B, H, N, D)) give the similarity
        metric; without them the features are used. ``Plan.scores`` holds each A token's best similarity
        (0 for other tokens).
        """
        mode = self.resolve_mode(ctx)
        block = ctx.block if ctx is not None else 0
        cand = tokens.valid & ~tokens.protect
        layout = group_layout(cand, resolve_groups(tokens, self.scope))
        r = self.merge_counts(layout.count, ctx.budget if ctx is not None else None)
        if not bool((r > 0).any()):
            # Exact identity: a pure selection of every valid token, no averaging anywhere.
            return build_selection_plan(tokens, tokens.valid, mode, block=block)
        a_idx, a_ok = layout.index[:, :, 0::2], layout.valid[:, :, 0::2]
        b_idx, b_ok = layout.index[:, :, 1::2], layout.valid[:, :, 1::2]
        metric = F.normalize(token_metric(tokens, ctx).float(), dim=-1)
        sim = _gather_groups(metric, a_idx) @ _gather_groups(metric, b_idx).transpose(-1, -2)  # (B, G, La, Lb)
        allowed = a_ok.unsqueeze(-1) & b_ok.unsqueeze(-2)
        if tokens.pos.is_floating_point():
            allowed = allowed & self._neighbours(tokens, cand, a_idx, b_idx)
        sim = sim.masked_fill(~allowed, float("-inf"))
        best, best_j = sim.max(dim=-1)  # first maximum: ties pick the lower B index
        has_edge = torch.isfinite(best)
        order = torch.sort(best, dim=-1, descending=True, stable=True).indices
        arange = torch.arange(order.shape[-1], device=order.device).expand_as(order)
        rank = torch.empty_like(order).scatter_(-1, order, arange)
        r = torch.minimum(r, has_edge.sum(dim=-1))
        chosen = has_edge & (rank < r.unsqueeze(-1))  # (B, G, La)
        dest_tok = b_idx.gather(-1, best_j)
        merged, dest = _source_map(tokens.valid.shape, a_idx, chosen, dest_tok)
        plan = build_selection_plan(tokens, tokens.valid & ~merged, mode, block=block)
        scores = _scatter_a(best.masked_fill(~has_edge, 0.0), a_idx, a_ok, tokens.valid.shape)
        return replace(
            plan,
            assign=torch.where(merged, plan.assign.gather(1, dest), plan.assign),
            direct=tokens.valid.clone(),  # kept tokens and merge sources both read their slot back
            # Size-0 tokens weigh almost nothing in an average, but two of them still average cleanly.
            weight=tokens.size.float().clamp_min(1e-12),
            merges=True,
            scores=scores,
        )

    def _neighbours(self, tokens: TokenSet, cand: Tensor, a_idx: Tensor, b_idx: Tensor) -> Tensor:
        """(B, G, La, Lb) bool: the pair passes the radius and kNN rules (superpoint centroids)."""
        pos = tokens.pos.float()
        ok = torch.ones(*a_idx.shape, b_idx.shape[-1], dtype=torch.bool, device=pos.device)
        if self.radius is not None:
            # Exact differences (not the matmul form of cdist), so the radius test has no rounding slack.
            d = torch.cdist(
                _gather_groups(pos, a_idx), _gather_groups(pos, b_idx), compute_mode="donot_use_mm_for_euclid_dist"
            )
            ok = ok & (d <= self.radius)
        if self.knn is not None:
            ok = ok & _pair_lookup(knn_graph(pos, cand, self.knn), a_idx, b_idx)
        return ok


def knn_graph(pos: Tensor, member: Tensor, k: int) -> Tensor:
    """Symmetric k-nearest-neighbour graph of the member tokens: (B, N, N) bool.

    Args:
        pos: (B, N, D) float positions (superpoint centroids, metres).
        member: (B, N) bool, tokens that take part (others have no edges).
        k: neighbours per token (fewer when the sample has fewer members); ties pick the lower index.
    """
    b, n, _ = pos.shape
    d = torch.cdist(pos, pos, compute_mode="donot_use_mm_for_euclid_dist")
    pair = member.unsqueeze(2) & member.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=pos.device)
    d = d.masked_fill(~pair, float("inf"))
    k = min(k, n - 1)
    adj = torch.zeros(b, n, n + 1, dtype=torch.bool, device=pos.device)
    if k > 0:
        vals, idx = torch.sort(d, dim=-1, stable=True)
        vals, idx = vals[..., :k], idx[..., :k]
        adj.scatter_(2, torch.where(torch.isfinite(vals), idx, n), True)
    adj = adj[..., :n]
    return adj | adj.transpose(1, 2)


def _gather_groups(t: Tensor, index: Tensor) -> Tensor:
    """(B, N, C) rows at (B, G, L) indices -> (B, G, L, C)."""
    b, g, l = index.shape
    return batched_gather(t, index.reshape(b, g * l)).reshape(b, g, l, *t.shape[2:])


def _pair_lookup(adj: Tensor, a_idx: Tensor, b_idx: Tensor) -> Tensor:
    """(B, N, N) bool at every (A, B) pair of each group -> (B, G, La, Lb)."""
    b, n, _ = adj.shape
    flat = a_idx.unsqueeze(-1) * n + b_idx.unsqueeze(-2)
    return adj.reshape(b, n * n).gather(1, flat.reshape(b, -1)).reshape(flat.shape)


def _source_map(shape: torch.Size, a_idx: Tensor, chosen: Tensor, dest_tok: Tensor) -> tuple[Tensor, Tensor]:
    """(B, N) merged-source mask and (B, N) destination token of every token (itself when not merged)."""
    b, n = shape
    target = torch.where(chosen, a_idx, n).reshape(b, -1)  # unchosen entries land in a dump column
    arange = torch.arange(n + 1, device=a_idx.device).unsqueeze(0).expand(b, n + 1)
    dest = arange.clone().scatter_(1, target, dest_tok.reshape(b, -1))[:, :n]
    merged = torch.zeros(b, n + 1, dtype=torch.bool, device=a_idx.device).scatter_(1, target, True)[:, :n]
    return merged, dest


def _scatter_a(values: Tensor, a_idx: Tensor, a_ok: Tensor, shape: torch.Size) -> Tensor:
    """Per-A-member values (B, G, La) -> (B, N), 0 for every other token."""
    group = torch.zeros(shape, dtype=torch.long, device=a_idx.device)
    layout = GroupLayout(index=a_idx, valid=a_ok, count=a_ok.sum(-1), group=group)
    return layout.scatter(values, torch.zeros(shape, dtype=values.dtype, device=values.device))
