"""Query-query attention that sees where the queries' objects are (an addition to MDIN, off by default).

The published decoder gives its queries no position: superpoint features come from a translation-equivariant
sparse U-Net, and QQA compares query contents only. A description such as "the chairs to the left of the picture
if you face the television" is a relation between three objects metres apart, which the SPFormer-pretrained U-Net
of the published model partly encodes in its features. With ``MDIN(relative_positions=True)`` each layer's QQA also
receives the pairwise offsets between the queries' objects, in the manner of the spatial self-attention of
ViL3DRel (Chen et al., NeurIPS 2022): a learned embedding of the offset ``p_j - p_i`` adds a bias per head to the
attention logits (which objects to look at) and a vector to the attended values (where they are), so a query can
gather "the picture is 1 m to my +x, the television 3 m to my -y" and the heads can compare those directions.

Frames: positions are metres in the batch's ``xyz_middle`` frame (randomly rotated about z in training), so the
offsets are not rotation-invariant; the relations of the descriptions are, and the augmentation teaches that.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointcloud.rgsan.tlm import mlp

PAIR_DIM = 5


def pair_offsets(pos: Tensor) -> Tensor:
    """(D, Q, 3) positions (metres) -> (D, Q, Q, 5) ``[p_j - p_i (3), horizontal distance, log(1 + distance)]``
    for every query i (dim 1) and key j (dim 2)."""
    delta = pos[:, None, :, :] - pos[:, :, None, :]
    horizontal = delta[..., :2].norm(dim=-1, keepdim=True)
    return torch.cat([delta, horizontal, torch.log1p(delta.norm(dim=-1, keepdim=True))], -1)


class PairEmbedding(nn.Module):
    """``MLP(pair_offsets(pos))``: (D, Q, 3) -> (D, Q, Q, hidden), computed once per forward, read by every layer."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.mlp = mlp([PAIR_DIM, hidden, hidden])

    def forward(self, pos: Tensor) -> Tensor:
        return self.mlp(pair_offsets(pos))


class SpatialQueryAttention(nn.Module):
    """Multi-head self-attention of the queries with a pairwise positional bias and positional values.

    ``a_h(i, j) = softmax_j(<W_q x_i, W_k x_j + R e_ij>_h / sqrt(d_h) + w_h . e_ij)``;
    ``out_i = W_o concat_h sum_j a_h(i, j) (W_v x_j + U e_ij)_h``.
    The ``R e_ij`` key term (relative position representations, Shaw et al. 2018; with ``relative_keys``) lets
    what a query looks for depend on its content and the offset together ("objects to my left" once the words say
    left), not only on the offset. ``norm`` is the LayerNorm of the residual,
    used as :class:`pointcloud.mdin.decoder._Attention`'s (the decoder takes :meth:`delta` only unless
    ``parity_triple_residual``).

    Args:
        dim: query width d; num_heads: H (d divisible by H); pair_dim: width of the pair embedding;
        relative_keys: add the ``R e_ij`` key term.
    """

    def __init__(self, dim: int, num_heads: int, pair_dim: int = 64, relative_keys: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"SpatialQueryAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.pair_bias = nn.Linear(pair_dim, num_heads)
        self.pair_value = nn.Linear(pair_dim, dim)
        self.pair_key = nn.Linear(pair_dim, dim, bias=False) if relative_keys else None
        self.norm = nn.LayerNorm(dim)
        self.num_heads = num_heads

    def delta(self, x: Tensor, pair: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """The attention output without residual.

        Args:
            x: (D, Q, d) queries; pair: (D, Q, Q, pair_dim) :class:`PairEmbedding` of their positions;
            key_padding: (D, Q) True on padding queries (never attended; a row of all padding attends to all).

        Returns:
            (D, Q, d).
        """
        n, q, d = x.shape
        h = self.num_heads
        qs, ks, vs = self.qkv(x).view(n, q, 3, h, d // h).permute(2, 0, 3, 1, 4)  # each (D, H, Q, d_h)
        scores = qs @ ks.transpose(-1, -2)
        if self.pair_key is not None:  # <q_i, R e_ij>_h = <R_h^T q_i, e_ij>: project the queries, not the pairs
            q_pair = torch.einsum("nhid,hdc->nhic", qs, self.pair_key.weight.view(h, d // h, -1))
            scores = scores + torch.einsum("nhic,nijc->nhij", q_pair, pair)
        logits = scores / math.sqrt(d // h) + self.pair_bias(pair).permute(0, 3, 1, 2)
        if key_padding is not None:
            blocked = key_padding[:, None, None, :] & ~key_padding.all(1)[:, None, None, None]
            logits = logits.masked_fill(blocked, float("-inf"))
        attn = F.softmax(logits, dim=-1)  # (D, H, Q, Q)
        # sum_j a_ij U e_ij = U sum_j a_ij e_ij: average the embeddings per head first, then project (Q times fewer
        # products than projecting every pair).
        gathered = torch.einsum("nhij,nijc->nhic", attn, pair)  # (D, H, Q, pair_dim)
        weight = self.pair_value.weight.view(h, d // h, -1)  # (H, d_h, pair_dim)
        pair_values = torch.einsum("nhic,hkc->nhik", gathered, weight) + self.pair_value.bias.view(1, h, 1, d // h)
        values = attn @ vs + pair_values
        return self.out(values.transpose(1, 2).reshape(n, q, d))

    def forward(self, x: Tensor, pair: Tensor, key_padding: Tensor | None = None) -> Tensor:
        """``LN(x + delta)``: (D, Q, d)."""
        return self.norm(x + self.delta(x, pair, key_padding))
