"""Contextual relative position encoding of RG-SAN's cross-attention (rgsan-mdin spec §4.3, from MAFT).

The offset ``r = query reference position - superpoint centre`` (metres, per axis) is binned at ``grid_size``
(0.1 m) into ``2 * half`` bins (48: ``floor(r / 0.1)`` clamped to [-24, 23], shifted by +24). Three learned
tables ``T_q, T_k, T_v`` of shape (H, C, 3 * 48) (one block of 48 bins per axis) give, per head h:

- query term  ``sum_axes <q_h(t), T_q[h, :, axis, idx(t, s, axis)]>`` (q = scaled content half of the query),
- key term    ``sum_axes <k_h(s), T_k[h, :, axis, idx(t, s, axis)]>`` (k = unscaled content half of the key),

both added to the attention logits, and the value term
``out_h(t) += sum_s a_h(t, s) * sum_axes T_v[h, :, axis, idx(t, s, axis)]``.

The original runs these in a CUDA kernel. Here, in pure PyTorch: the query/key terms project q (or k) on
all bins once, (B, H, T, 3, 48), and ``torch.gather`` the bin of every (t, s) pair per axis; the value term
scatter-adds the attention weights into per-(t, axis, bin) accumulators (B, H, T, 3, 48) and contracts them with
``T_v``. The gather/scatter indices are broadcast over heads (stride 0), so no (B, H, T, S) index is
materialised. (A heads-innermost variant with ``index_select`` / ``index_add`` was measured 1.5x slower on 2 CPU
cores and dropped.) :func:`reference_rpe` is the naive loop both terms are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

GRID_SIZE = 0.1  # metres per bin (``grid_size``)
HALF_BINS = 24  # ``quant_grid_length``: bins cover [-2.4 m, 2.4 m) per axis


def relative_bins(query_pos: Tensor, key_pos: Tensor, grid_size: float = GRID_SIZE, half: int = HALF_BINS) -> Tensor:
    """Bin index of every query/key offset, per axis.

    Args:
        query_pos: (B, T, 3) metres, the queries' reference positions.
        key_pos: (B, S, 3) metres, the superpoint centres.

    Returns:
        (3, B, T, S) int64 in ``[0, 2 * half)``: ``floor((q - k) / grid_size)`` clamped to ``[-half, half - 1]``,
        plus ``half``; axis-major, so every axis is a contiguous (B, T, S) block. No gradient (integers).
    """
    rel = query_pos.detach()[:, :, None, :] - key_pos.detach()[:, None, :, :]  # (B, T, S, 3)
    idx = torch.div(rel, grid_size, rounding_mode="floor").clamp_(-half, half - 1).long() + half
    return idx.permute(3, 0, 1, 2).contiguous()


class ContextualRPE(nn.Module):
    """The three relative-position tables of one cross-attention layer and their logit / value terms.

    Args:
        num_heads: H.
        head_dim: C, channels of the content half of a head (32 for d = 256, 8 heads) and of a value head.
        half: bins per half axis (24 -> 48 bins per axis).
        query, key, value: which terms are active (all three in RG-SAN).
    """

    def __init__(self, num_heads: int = 8, head_dim: int = 32, half: int = HALF_BINS, query: bool = True,
                 key: bool = True, value: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.bins = num_heads, head_dim, 2 * half
        shape = (num_heads, head_dim, 3 * self.bins)
        self.table_q = nn.Parameter(torch.zeros(shape)) if query else None
        self.table_k = nn.Parameter(torch.zeros(shape)) if key else None
        self.table_v = nn.Parameter(torch.zeros(shape)) if value else None
        for table in (self.table_q, self.table_k, self.table_v):
            if table is not None:
                nn.init.trunc_normal_(table, std=0.02)

    def _split(self, table: Tensor) -> Tensor:
        """(H, C, 3 * L) -> (H, C, 3, L): one block of L bins per axis, axis-major as in the original."""
        return table.view(self.num_heads, self.head_dim, 3, self.bins)

    def logit_bias(self, q: Tensor, k: Tensor, idx: Tensor) -> Tensor | float:
        """Query + key terms.

        Args:
            q: (B, H, T, C) scaled query content halves; k: (B, H, S, C) key content halves.
            idx: (3, B, T, S) bins from :func:`relative_bins`.

        Returns:
            (B, H, T, S) logit bias (0.0 when both terms are off).
        """
        b, h, t, _ = q.shape
        s = k.shape[2]
        bias: Tensor | float = 0.0
        if self.table_q is not None:
            proj = torch.einsum("bhtc,hcal->bhtal", q, self._split(self.table_q))  # q on every bin
            for a in range(3):
                bias = bias + torch.gather(proj[:, :, :, a], 3, idx[a][:, None].expand(b, h, t, s))
        if self.table_k is not None:
            proj = torch.einsum("bhsc,hcal->bhsal", k, self._split(self.table_k))
            for a in range(3):
                index = idx[a].transpose(1, 2)[:, None].expand(b, h, s, t)  # (B, H, S, T)
                bias = bias + torch.gather(proj[:, :, :, a], 3, index).transpose(2, 3)
        return bias

    def value_term(self, attn: Tensor, idx: Tensor) -> Tensor | float:
        """Value term ``sum_s a(t, s) * sum_axes T_v[:, axis, idx(t, s, axis)]``.

        Args:
            attn: (B, H, T, S) attention weights (after softmax, masked entries 0).
            idx: (3, B, T, S) bins.

        Returns:
            (B, H, T, C) added to the attention output per head (0.0 when the term is off).
        """
        if self.table_v is None:
            return 0.0
        b, h, t, s = attn.shape
        acc = torch.stack([attn.new_zeros(b, h, t, self.bins).scatter_add(3, idx[a][:, None].expand(b, h, t, s), attn)
                           for a in range(3)], dim=3)  # (B, H, T, 3, L): attention mass per (t, axis, bin)
        return torch.einsum("bhtal,hcal->bhtc", acc, self._split(self.table_v))


def reference_rpe(rpe: ContextualRPE, q: Tensor, k: Tensor, attn: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """Naive per-element loops over (b, h, t, s, axis): the definition the fast path is tested against.

    Shapes as in :meth:`ContextualRPE.logit_bias` and :meth:`ContextualRPE.value_term`; returns
    ``(bias (B, H, T, S), value (B, H, T, C))``. Only for tiny inputs.
    """
    b_, h_, t_, c_ = q.shape
    s_ = k.shape[2]
    bias = q.new_zeros(b_, h_, t_, s_)
    value = q.new_zeros(b_, h_, t_, rpe.head_dim)
    tq = rpe._split(rpe.table_q) if rpe.table_q is not None else None
    tk = rpe._split(rpe.table_k) if rpe.table_k is not None else None
    tv = rpe._split(rpe.table_v) if rpe.table_v is not None else None
    for b in range(b_):
        for h in range(h_):
            for t in range(t_):
                for s in range(s_):
                    for a in range(3):
                        i = int(idx[a, b, t, s])
                        if tq is not None:
                            bias[b, h, t, s] += torch.dot(q[b, h, t], tq[h, :, a, i])
                        if tk is not None:
                            bias[b, h, t, s] += torch.dot(k[b, h, s], tk[h, :, a, i])
                        if tv is not None:
                            value[b, h, t] += attn[b, h, t, s] * tv[h, :, a, i]
    return bias, value
