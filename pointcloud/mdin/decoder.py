"""MDIN decoder layer and prediction heads (rgsan-mdin spec §6.3, §6.4).

Shapes: D descriptions, Q queries per description, S superpoints (padded per scene to S_max), T words, d width.
Superpoint features reach a description by indexing its scene's row (``inst[desc_scene]``), never by a stored
copy (spec D16).

Two parity flags reproduce the original where it deviates from its own design:

- ``parity_residual_only`` (D3): the original's cross-attention blocks compute dropout and LayerNorm and then
  discard them, so a cross-attention is ``x + attn(x)`` without normalisation. Default False: ``LN(x + attn(x))``.
- ``parity_triple_residual`` (D4): the fusion sums ``q_QSA + QLA_out + QQA_out`` where the last two already
  contain ``q_QSA`` through their residuals (it enters three times). Default False: one residual,
  ``LN(q_QSA + ΔQQA + ΔQLA)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pointcloud.mdin.spatial import SpatialQueryAttention
from pointcloud.rgsan.tlm import mlp


class _Attention(nn.Module):
    """Multi-head attention with a residual and (unless ``residual_only``) a post-LayerNorm."""

    def __init__(self, dim: int, num_heads: int, residual_only: bool = False) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.residual_only = residual_only
        if residual_only:  # never applied (D3): frozen, see MDINDecoderLayer
            self.norm.requires_grad_(False)

    def delta(self, x: Tensor, kv: Tensor, key_padding: Tensor | None = None,
              attn_mask: Tensor | None = None) -> Tensor:
        """The attention output alone (no residual): (N, L, d)."""
        return self.attn(x, kv, kv, key_padding_mask=key_padding, attn_mask=attn_mask, need_weights=False)[0]

    def forward(self, x: Tensor, kv: Tensor, key_padding: Tensor | None = None,
                attn_mask: Tensor | None = None) -> Tensor:
        out = x + self.delta(x, kv, key_padding, attn_mask)
        return out if self.residual_only else self.norm(out)


class _FFN(nn.Module):
    """``LN(x + W2 GELU(W1 x))`` (dropout 0, as published)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


class LanguageUpdate(nn.Module):
    """Words: self-attention (residual + LN), cross-attention to a context (superpoints or queries), FFN.

    MDIN uses one instance twice per layer (update A against the superpoints, update B against the queries).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, residual_only: bool = False) -> None:
        super().__init__()
        self.self_attn = _Attention(dim, num_heads)
        self.cross_attn = _Attention(dim, num_heads, residual_only)
        self.ffn = _FFN(dim, ffn_dim)

    def forward(self, words: Tensor, word_pad: Tensor, context: Tensor, context_pad: Tensor | None) -> Tensor:
        """words (D, T, d), word_pad (D, T) True on padding, context (D, M, d) -> (D, T, d)."""
        words = self.self_attn(words, words, key_padding=word_pad)
        words = self.cross_attn(words, context, key_padding=context_pad)
        return self.ffn(words)


class MDINDecoderLayer(nn.Module):
    """One layer of spec §6.3: language update A, QSA, QQA, QLA, language update B, fusion + FFN.

    ``pair_dim > 0`` (not published): QQA is :class:`~pointcloud.mdin.spatial.SpatialQueryAttention`, which also
    reads the pairwise offsets of the queries' objects (an embedding of width ``pair_dim``; ``relative_keys``: also
    as a key term).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024,
                 parity_residual_only: bool = False, parity_triple_residual: bool = False, pair_dim: int = 0,
                 relative_keys: bool = False) -> None:
        super().__init__()
        self.language = LanguageUpdate(dim, num_heads, ffn_dim, parity_residual_only)
        self.qsa = _Attention(dim, num_heads, parity_residual_only)
        self.qqa = (SpatialQueryAttention(dim, num_heads, pair_dim, relative_keys) if pair_dim > 0
                    else _Attention(dim, num_heads))
        self.qla = _Attention(dim, num_heads, parity_residual_only)
        self.fuse_norm = nn.LayerNorm(dim)
        self.ffn = _FFN(dim, ffn_dim)
        self.num_heads = num_heads
        self.triple_residual = parity_triple_residual
        # LayerNorms that one mode never applies (QQA's and QLA's own without the triple residual, which take only
        # their deltas; the fusion norm with it) are kept, so that state dicts have the same keys in every mode,
        # but frozen: every trainable parameter gets a gradient (DDP without find_unused_parameters).
        for norm in ((self.qqa.norm, self.qla.norm) if not parity_triple_residual else (self.fuse_norm,)):
            norm.requires_grad_(False)

    def forward(self, queries: Tensor, words: Tensor, word_pad: Tensor, inst: Tensor, inst_pad: Tensor,
                attn_mask: Tensor, pair: Tensor | None = None,
                query_pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Update queries and words.

        Args:
            queries: (D, Q, d); words: (D, T, d); word_pad: (D, T) True on padding.
            inst: (D, S, d) superpoint features of each description's scene; inst_pad: (D, S) True on padding.
            attn_mask: (D, Q, S) True where query q may NOT attend superpoint s (from the previous prediction).
            pair: (D, Q, Q, pair_dim) embedded offsets of the queries' objects (needed with ``pair_dim > 0``);
            query_pad: (D, Q) True on padding queries, which the spatial QQA does not attend.

        Returns:
            (queries (D, Q, d), words (D, T, d)).
        """
        words = self.language(words, word_pad, inst, inst_pad)
        mask = attn_mask.repeat_interleave(self.num_heads, dim=0)  # (D * heads, Q, S), nn.MultiheadAttention's layout
        q_sa = self.qsa(queries, inst, key_padding=None, attn_mask=mask)
        if isinstance(self.qqa, SpatialQueryAttention):
            if pair is None:
                raise ValueError("MDINDecoderLayer(pair_dim > 0) needs the pair embedding of the queries' positions")
            d_qq = self.qqa.delta(q_sa, pair, query_pad)
        else:
            d_qq = self.qqa.delta(q_sa, q_sa)
        d_ql = self.qla.delta(q_sa, words, key_padding=word_pad)
        words = self.language(words, word_pad, q_sa, None)
        if self.triple_residual:  # q_QSA + LN(q_QSA + ΔQQA) + (q_QSA + ΔQLA [+ LN unless residual-only])
            q_qq = self.qqa.norm(q_sa + d_qq)
            q_ql = q_sa + d_ql if self.qla.residual_only else self.qla.norm(q_sa + d_ql)
            fused = q_sa + q_qq + q_ql
        else:
            fused = self.fuse_norm(q_sa + d_qq + d_ql)
        return self.ffn(fused), words


def attention_mask_from_logits(mask_logits: Tensor, sp_pad: Tensor, threshold: float = 0.5) -> Tensor:
    """(D, Q, S) bool "may not attend": sigmoid(logit) < threshold or padding; fully masked rows are unmasked
    (except for padding, which stays masked), as in the original.

    Args:
        mask_logits: (D, Q, S) previous prediction; sp_pad: (D, S) True on padding.
    """
    with torch.no_grad():
        blocked = (mask_logits.sigmoid() < threshold) | sp_pad[:, None, :]
        full = blocked.all(-1, keepdim=True)
        return torch.where(full, sp_pad[:, None, :].expand_as(blocked), blocked)


class MDINHeads(nn.Module):
    """Heads applied to every query at every prediction (spec §6.4).

    - mask: ``<LN(q), MLP(S)>`` over the description's superpoints;
    - score: MLP d -> d -> 1 on LN(q) (IoU regressor);
    - indicator: MLP d -> d (ReLU) -> 2, then Linear 2 -> 2, on the un-normalised query (class 1 = target);
    - contrastive projection: MLP d -> d -> d -> proj_dim, L2-normalised.
    """

    def __init__(self, dim: int = 256, proj_dim: int = 64) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.sp_mlp = mlp([dim, dim, dim])
        self.score = mlp([dim, dim, 1])
        self.indicator = nn.Sequential(mlp([dim, dim, 2]), nn.Linear(2, 2))
        self.query_proj = mlp([dim, dim, dim, proj_dim])

    def mask_features(self, inst: Tensor) -> Tensor:
        """(B, S, d) scene superpoint features -> (B, S, d) mask keys, once per scene and layer."""
        return self.sp_mlp(inst)

    def forward(self, queries: Tensor, mask_keys: Tensor) -> dict[str, Tensor]:
        """queries (D, Q, d), mask_keys (D, S, d) -> masks (D, Q, S), scores (D, Q), indicator (D, Q, 2),
        proj (D, Q, proj_dim) unit vectors."""
        qn = self.norm(queries)
        return {"masks": torch.einsum("dqc,dsc->dqs", qn, mask_keys), "scores": self.score(qn).squeeze(-1),
                "indicator": self.indicator(queries),
                "proj": nn.functional.normalize(self.query_proj(queries), dim=-1)}
