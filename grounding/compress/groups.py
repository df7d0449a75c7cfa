"""Per-group token layouts and helpers shared by the merging, pruning and pooling compressors.

A *group* is the unit inside which a compressor decides: an attention window (``TokenSet.window_id``) for
windowed blocks, or the whole sample before global blocks and for superpoints (spec §4.5: fixed k per
sample or per window). :func:`group_layout` packs the member tokens of every group into a padded
(B, G, L) index so that per-group work (similarities, top-k, cross-attention) is batched, costs
O(G · L²) instead of O(N²), and never mixes groups.

Also here: the similarity metric lookup (keys from the ViT, else features), per-group top-k with the
straight-through threshold, and the straight-through keep weight itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from grounding.compress.base import CompressContext, Plan, build_selection_plan
from grounding.tokens import TokenSet, batched_gather

__all__ = [
    "SCOPES",
    "GroupLayout",
    "group_layout",
    "group_topk",
    "resolve_groups",
    "straight_through_keep",
    "token_metric",
]

SCOPES = ("auto", "window", "global")


@dataclass(frozen=True)
class GroupLayout:
    """Member tokens of every group, packed.

    Fields (G = groups, L = largest group):
        index: (B, G, L) int64, token indices of each group's members in ascending order; 0 on padding.
        valid: (B, G, L) bool, False on padding entries.
        count: (B, G) int64, members per group.
        group: (B, N) int64, group of every token (0 for tokens that are not members).
    """

    index: Tensor
    valid: Tensor
    count: Tensor
    group: Tensor

    @property
    def num_groups(self) -> int:
        return self.index.shape[1]

    def gather(self, t: Tensor) -> Tensor:
        """(B, N, *) token values -> (B, G, L, *) member values (padding entries hold token 0's row)."""
        b, g, l = self.index.shape
        return batched_gather(t, self.index.reshape(b, g * l)).reshape(b, g, l, *t.shape[2:])

    @cached_property
    def scatter_index(self) -> Tensor:
        """(B, G·L) token index of every member entry; padding entries point at a dump row N (cut off after).

        Computed once per layout (a layout reused by several blocks scatters with the same index).
        """
        b, g, l = self.index.shape
        return torch.where(self.valid, self.index, self.group.shape[1]).reshape(b, g * l)

    def scatter(self, values: Tensor, out: Tensor) -> Tensor:
        """Write member values (B, G, L, *) into a copy of ``out`` (B, N, *); other rows are kept."""
        b, g, l = self.index.shape
        n = out.shape[1]
        if n != self.group.shape[1]:
            raise ValueError(f"scatter: out has {n} tokens, the layout {self.group.shape[1]}")
        idx = self.scatter_index
        ext = torch.cat([out, out[:, :1]], dim=1).clone()
        vals = values.reshape(b, g * l, *values.shape[3:]).to(out.dtype)
        idx = idx.reshape(b, g * l, *([1] * (out.dim() - 2))).expand_as(vals)
        return ext.scatter(1, idx, vals)[:, :n]


def group_layout(member: Tensor, group_id: Tensor | None = None) -> GroupLayout:
    """Pack the tokens where ``member`` (B, N) bool is True by group.

    Args:
        member: (B, N) bool, tokens to place (e.g. valid and unprotected).
        group_id: (B, N) int64 >= 0 group of each token (window index), or None for one group per sample.
    Returns:
        A :class:`GroupLayout` with G = max(group_id) + 1 (1 without groups) and L = largest member count.
    """
    b, n = member.shape
    dev = member.device
    gid = torch.zeros_like(member, dtype=torch.long) if group_id is None else group_id.long()
    gid = torch.where(member, gid, 0)
    n_groups = int(gid.max()) + 1 if member.any() else 1
    arange = torch.arange(n, device=dev).unsqueeze(0).expand(b, n)
    # Unique keys: members sorted by (group, index); non-members last. Sorting unique keys is deterministic.
    key = torch.where(member, gid * n + arange, n_groups * n + arange)
    order = key.argsort(dim=1)
    count = torch.zeros(b, n_groups, dtype=torch.long, device=dev).scatter_add_(1, gid, member.long())
    start = count.cumsum(dim=1) - count
    s_member = member.gather(1, order)
    s_gid = gid.gather(1, order)
    slot_in_group = arange - start.gather(1, s_gid)
    width = max(int(count.max()), 1) if b > 0 else 1
    target = torch.where(s_member, s_gid * width + slot_in_group, n_groups * width)
    index = torch.zeros(b, n_groups * width + 1, dtype=torch.long, device=dev).scatter_(1, target, order)
    valid = torch.zeros(b, n_groups * width + 1, dtype=torch.bool, device=dev).scatter_(1, target, s_member)
    return GroupLayout(
        index=index[:, :-1].reshape(b, n_groups, width),
        valid=valid[:, :-1].reshape(b, n_groups, width),
        count=count,
        group=gid,
    )


def resolve_groups(tokens: TokenSet, scope: str) -> Tensor | None:
    """Group ids for ``scope``: "window" (needs ``window_id``), "global" (None) or "auto" (window if any)."""
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "window" and tokens.window_id is None:
        raise ValueError("scope='window' needs TokenSet.window_id (build with TokenSet.from_grid(window_size=...))")
    return None if scope == "global" else tokens.window_id


def token_metric(tokens: TokenSet, ctx: CompressContext | None) -> Tensor:
    """The per-token vector that similarity and norm scores use: (B, N, C').

    ``ctx.extras["metric"]`` (B, N, C') when given (e.g. keys averaged over heads, as ToMe uses), else
    ``ctx.extras["keys"]`` as (B, N, C') or per head (B, H, N, D) (averaged over heads), else ``tokens.x``.
    """
    b, n = tokens.valid.shape
    extras = ctx.extras if ctx is not None else {}
    for name in ("metric", "keys"):
        m = extras.get(name)
        if m is None:
            continue
        if m.dim() == 4 and m.shape[0] == b and m.shape[2] == n:
            m = m.mean(dim=1)
        if m.dim() != 3 or m.shape[:2] != (b, n):
            raise ValueError(
                f"CompressContext.extras[{name!r}]: expected (B, N, C) or (B, H, N, D) with (B, N) = {(b, n)}, "
                f"got {tuple(m.shape)}"
            )
        return m
    return tokens.x


def group_topk(scores: Tensor, layout: GroupLayout, k: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the ``k`` (B, G) highest-scoring members of every group.

    Args:
        scores: (B, N) scores (higher is kept first); ties keep the lower token index.
        layout: members to choose from.
        k: (B, G) int64 keep counts, at most the group's member count.
    Returns:
        keep (B, N) bool, and tau (B, N) float: for every token, the threshold of its group halfway
        between its k-th and (k+1)-th scores (-inf when the whole group is kept), for straight-through.
    """
    vals = layout.gather(scores.unsqueeze(-1)).squeeze(-1).masked_fill(~layout.valid, float("-inf"))
    # Members are in ascending index order, so a stable sort breaks ties by index.
    sorted_vals, order = torch.sort(vals, dim=-1, descending=True, stable=True)
    width = vals.shape[-1]
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(width, device=vals.device).expand_as(order))
    keep_l = layout.valid & (rank < k.unsqueeze(-1))
    keep = layout.scatter(keep_l, torch.zeros_like(scores, dtype=torch.bool))
    kth = sorted_vals.gather(-1, (k - 1).clamp(min=0).unsqueeze(-1)).squeeze(-1)
    nxt = sorted_vals.gather(-1, k.clamp(max=width - 1).unsqueeze(-1)).squeeze(-1)
    nxt = torch.where(k < layout.count, nxt, float("-inf"))
    tau = ((kth + nxt) / 2).gather(1, layout.group)
    return keep, tau


def straight_through_keep(scores: Tensor, keep: Tensor, tau: Tensor, cand: Tensor, temperature: float) -> Tensor:
    """(B, N) keep weight: exactly the hard 0/1 ``keep`` forward, sigmoid((score - tau) / T) gradients backward.

    Non-candidates (padding, protected) weigh 1: protected tokens are forced in and padding never lands
    in a valid slot, so their weight is never used.
    """
    soft = torch.sigmoid((scores - tau) / temperature)
    return torch.where(cand, keep.to(scores.dtype) + (soft - soft.detach()), torch.ones_like(soft))


def topk_selection_plan(tokens: TokenSet, ranking: Tensor, layout: GroupLayout, k: Tensor, mode: str, *,
                        fuse: bool, temperature: float, straight_through: bool, scores: Tensor,
                        ctx: CompressContext | None) -> Plan:
    """The plan of the pruning-type compressors: keep the top ``k`` of ``ranking`` in each group of ``layout``.

    Args:
        ranking: (B, N) values ranked (higher kept); its gradient flows through the straight-through keep weight
            when ``straight_through`` and autograd records it.
        k: keep counts per group, shaped like ``layout.count``.
        scores: (B, N) reported as ``Plan.scores`` (0 on padding).
    """
    cand = tokens.valid & ~tokens.protect
    keep, tau = group_topk(ranking.detach(), layout, k)
    keep_weight = None
    if straight_through and ranking.requires_grad:  # only when autograd records the scores (training)
        keep_weight = straight_through_keep(ranking, keep, tau, cand, temperature)
    return build_selection_plan(tokens, keep, mode, fuse=fuse, keep_weight=keep_weight,
                                scores=scores.masked_fill(~tokens.valid, 0.0),
                                block=ctx.block if ctx is not None else 0)
