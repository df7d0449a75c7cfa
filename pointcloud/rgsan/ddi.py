"""Dependency-driven interaction (DDI) between RG-SAN's word queries (rgsan-mdin spec §4.1).

One DDI layer runs, in parallel on the same input x (D descriptions x N nodes x 256):

1. multi-head self-attention over all nodes of a description (8 heads, key-padding mask);
2. a graph-transformer sublayer (Dwivedi & Bresson) along the dependency edges (dependent -> governor):
   per edge and head, ``score = exp(clamp(sum_c K[src] * Q[dst] / sqrt(32) * E[edge], -5, 5))``; every node
   aggregates ``sum score * V[src] / (sum score + 1e-6)`` over its incoming edges (0 when it has none), then
   ``O_h``; the edge features are updated from the per-channel products (``O_e``, residual, BatchNorm, FFN
   256 -> 512 -> 256 ReLU, residual, BatchNorm) and carried to the next layer (the last layer's edge update
   reaches nothing: it is skipped and its weights are frozen, see :class:`GraphAttention`);

then ``x = LayerNorm(x + SA(x) + GA(x))`` and a GELU FFN 256 -> 1024 -> 256 with residual and LayerNorm.
Edges are given as flat node rows ``d * N + k`` (:class:`pointcloud.rgsan.graph.GraphBatch`), so the graph part
is a gather / index_add over E edges, with no loop over descriptions.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class FFN(nn.Module):
    """``LayerNorm(x + Linear(act(Linear(x))))`` (post-norm feed-forward block, dropout 0)."""

    def __init__(self, dim: int = 256, hidden: int = 1024, activation: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), activation(), nn.Linear(hidden, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x + self.net(x))


def _batch_norm(bn: nn.BatchNorm1d, x: Tensor) -> Tensor:
    """BatchNorm over edges that tolerates a training batch of a single edge (one one-word description):
    batch statistics of one sample are undefined, so that case is normalised with the running statistics."""
    if bn.training and x.shape[0] < 2:
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return bn(x)


class GraphAttention(nn.Module):
    """Edge-featured graph attention sublayer (the node and edge outputs of spec §4.1, step 2).

    Args:
        dim: node and edge width (256).
        num_heads: heads (8, so 32 channels per head).
        update_edges: compute the updated edge features. False in the last DDI layer, whose edge output nothing
            reads: its edge weights (``out_e``, ``norm_e1``, ``ffn_e``, ``norm_e2``) are still built, so state
            dicts keep the original's keys, but frozen, so every trainable parameter gets a gradient (DDP without
            ``find_unused_parameters``, as for DIT's unused SAM parts) and ``forward`` returns the edges as given.
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, update_edges: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"GraphAttention: dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.e = nn.Linear(dim, dim, bias=False)
        self.out_h = nn.Linear(dim, dim)
        self.out_e = nn.Linear(dim, dim)
        self.norm_e1 = nn.BatchNorm1d(dim)
        self.ffn_e = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.norm_e2 = nn.BatchNorm1d(dim)
        self.update_edges = update_edges
        if not update_edges:
            for module in (self.out_e, self.norm_e1, self.ffn_e, self.norm_e2):
                module.requires_grad_(False)

    def forward(self, x: Tensor, edges: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            x: (R, C) node rows (flattened D * N, padding rows included; they have no edges).
            edges: (E, C) edge features.
            src, dst: (E,) int64 node rows of each edge's dependent and governor.

        Returns:
            ``(h (R, C), edges (E, C))``: aggregated node messages after ``O_h`` and the updated edge features
            (the given ones when ``update_edges`` is False).
        """
        r, c = x.shape
        h, dh = self.num_heads, self.head_dim
        q, k, v = (proj(x).view(r, h, dh) for proj in (self.q, self.k, self.v))
        e = self.e(edges).view(-1, h, dh)
        prod = k[src] * q[dst] / dh ** 0.5 * e  # (E, H, dh): per-channel edge scores
        score = prod.sum(-1, keepdim=True).clamp(-5.0, 5.0).exp()  # (E, H, 1)
        weighted = x.new_zeros(r, h, dh).index_add(0, dst, score * v[src])
        total = x.new_zeros(r, h, 1).index_add(0, dst, score)
        node_out = self.out_h((weighted / (total + 1e-6)).reshape(r, c))
        if not self.update_edges:
            return node_out, edges
        edge_out = _batch_norm(self.norm_e1, edges + self.out_e(prod.reshape(-1, c)))
        edge_out = _batch_norm(self.norm_e2, edge_out + self.ffn_e(edge_out))
        return node_out, edge_out


class DDILayer(nn.Module):
    """Self-attention and graph attention in parallel, LayerNorm, then the GELU FFN (spec §4.1, step 3).

    Args:
        dim: d_model (256).
        num_heads: heads of both attentions (8).
        ffn_dim: hidden width of the node FFN (1024).
        update_edges: see :class:`GraphAttention` (False for the last layer).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024, update_edges: bool = True) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.graph_attn = GraphAttention(dim, num_heads, update_edges)
        self.norm = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)

    def forward(self, x: Tensor, node_mask: Tensor, edges: Tensor, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """Args:
            x: (D, N, C) node features; node_mask: (D, N) bool, True on real nodes.
            edges: (E, C) edge features; src, dst: (E,) flat node rows ``d * N + k``.

        Returns:
            ``(x (D, N, C), edges (E, C))``.
        """
        d, n, c = x.shape
        sa, _ = self.self_attn(x, x, x, key_padding_mask=~node_mask, need_weights=False)
        ga, edges = self.graph_attn(x.reshape(d * n, c), edges, src, dst)
        x = self.norm(x + sa + ga.view(d, n, c))
        return self.ffn(x), edges
