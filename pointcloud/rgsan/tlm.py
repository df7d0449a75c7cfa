"""RG-SAN's Text-driven Localization Module: the 6-layer word-query decoder (rgsan-mdin spec §4.2).

Two layouts of the word queries are used, and converted by index (never by copying superpoints):

- description view (D, N, C): one row per description, N = max nodes ``[ROOT, w1..wn]``; DDI and the
  decoder's word self-attention work here;
- scene view (B, Q, C) with ``Q = D_max * N``: all word queries of a scene's descriptions side by side.
  Cross-attention, attention masks, positions and the relative position encoding work here, against the
  scene's superpoints (B, S_max, ·), which are computed once per scene and shared by its descriptions.
  Attention rows are independent, so putting a scene's descriptions in one row set is exact.

Frames: superpoint centres and query positions are metres (the batch's augmented ``xyz_middle`` frame).
Normalised positions (for the Fourier encodings) are ``(p - min) / (max - min)`` with the per-scene extent of
the superpoint centres (each axis at least 1 cm, so a flat scene cannot divide by zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pointcloud.rgsan.ddi import FFN, DDILayer
from pointcloud.rgsan.rpe import ContextualRPE, relative_bins


def mlp(dims: list[int]) -> nn.Sequential:
    """Linear layers ``dims[0] -> ... -> dims[-1]`` with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class FourierEmbedding(nn.Module):
    """3DETR Fourier features ``[sin(2 pi x B), cos(2 pi x B)]`` of normalised xyz; B (3, dim / 2) ~ N(0, 1) is
    drawn at construction and kept as a (saved) buffer, so a checkpoint always brings its own B."""

    def __init__(self, dim: int = 256) -> None:
        super().__init__()
        self.register_buffer("gauss_b", torch.randn(3, dim // 2))

    def forward(self, xyz: Tensor) -> Tensor:
        """(..., 3) normalised positions -> (..., dim)."""
        proj = (2 * math.pi * xyz) @ self.gauss_b
        return torch.cat([proj.sin(), proj.cos()], dim=-1)


def attention_weights(q: Tensor, k: Tensor, blocked: Tensor | None, bias: Tensor | float = 0.0) -> Tensor:
    """Softmax attention weights (B, H, T, S) of (B, H, T, c) queries (already scaled) on (B, H, S, c) keys.

    ``blocked`` (B, T or 1, S) bool is True where attention is forbidden; every row must keep >= 1 key.
    """
    logits = q @ k.transpose(-1, -2) + bias
    if blocked is not None:
        logits = logits.masked_fill(blocked[:, None], float("-inf"))
    return logits.softmax(-1)


class ConditionalCrossAttention(nn.Module):
    """Cross-attention of word queries to superpoints, per head ``[content (32) | position (32)]`` (spec §4.2.4),
    logits scaled by 64^-1/2, plus the contextual relative position encoding (§4.3)."""

    def __init__(self, dim: int = 256, num_heads: int = 8, use_rpe: bool = True) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q_content, self.q_sine = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.k_content, self.k_pos = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.bias)
        self.rpe = ContextualRPE(num_heads, self.head_dim) if use_rpe else None

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, c)

    def forward(self, x: Tensor, sine: Tensor, memory: Tensor, key_pos: Tensor, blocked: Tensor | None,
                bins: Tensor | None) -> Tensor:
        """Args:
            x: (B, T, C) queries; sine: (B, T, C) Fourier embedding of their normalised reference positions.
            memory: (B, S, C) superpoint keys/values; key_pos: (B, S, C) Fourier embedding of the centres.
            blocked: (B, T, S) or (B, 1, S) bool attention mask (True = masked) or None.
            bins: (3, B, T, S) relative-position bins (needed when the RPE is on).

        Returns:
            (B, T, C) attention output after the output projection.
        """
        c = self.head_dim
        q = torch.cat([self._heads(self.q_content(x)), self._heads(self.q_sine(sine))], -1) / math.sqrt(2 * c)
        k = torch.cat([self._heads(self.k_content(memory)), self._heads(self.k_pos(key_pos))], -1)
        v = self._heads(self.v(memory))
        bias = self.rpe.logit_bias(q[..., :c], k[..., :c], bins) if self.rpe is not None else 0.0
        attn = attention_weights(q, k, blocked, bias)
        out = attn @ v
        if self.rpe is not None:
            out = out + self.rpe.value_term(attn, bins)
        b, _, t, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    """Conditional-DETR decoder layer (post-norm): word self-attention with separate content / position
    projections, conditional cross-attention with RPE, GELU FFN (spec §4.2.4)."""

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024, use_rpe: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.sa_q_content, self.sa_q_pos = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.sa_k_content, self.sa_k_pos = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.sa_v, self.sa_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn = ConditionalCrossAttention(dim, num_heads, use_rpe)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn_dim)

    def self_attention(self, x: Tensor, pos: Tensor, node_mask: Tensor) -> Tensor:
        """(D, N, C) word queries, (D, N, C) query_pos, (D, N) bool real nodes -> (D, N, C)."""
        d, n, c = x.shape
        h = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(d, n, h, c // h).transpose(1, 2)

        q = heads(self.sa_q_content(x) + self.sa_q_pos(pos))
        k = heads(self.sa_k_content(x) + self.sa_k_pos(pos))
        out = F.scaled_dot_product_attention(q, k, heads(self.sa_v(x)), attn_mask=node_mask[:, None, None, :])
        return self.norm1(x + self.sa_out(out.transpose(1, 2).reshape(d, n, c)))

    def cross_and_ffn(self, x: Tensor, sine: Tensor, memory: Tensor, key_pos: Tensor, blocked: Tensor | None,
                      bins: Tensor | None) -> Tensor:
        """Scene view (B, T, C) -> (B, T, C); arguments as in :class:`ConditionalCrossAttention`."""
        x = self.norm2(x + self.cross_attn(x, sine, memory, key_pos, blocked, bins))
        return self.ffn(x)


@dataclass
class TLMOutputs:
    """The L + 1 predictions (initialisation + one per layer) of every description's output query.

    Attributes:
        masks: (L + 1, D, S_max) superpoint mask logits; columns >= the scene's superpoint count are padding.
        scores: (L + 1, D) predicted mask IoU.
        positions: (L + 1, D, 3) metres, the output word's position at each prediction.
        word_positions: (D, N, 3) metres, every node's final position (for inspection; not supervised).
    """

    masks: Tensor
    scores: Tensor
    positions: Tensor
    word_positions: Tensor


class SceneLayout:
    """Index maps between the description view (D, N, ·) and the scene view (B, D_max * N, ·)."""

    def __init__(self, desc_scene: Tensor, num_scenes: int, num_nodes: int) -> None:
        counts = torch.bincount(desc_scene, minlength=num_scenes)
        starts = torch.cumsum(counts, 0) - counts
        self.scene = desc_scene
        self.local = torch.arange(len(desc_scene), device=desc_scene.device) - starts[desc_scene]
        self.num_scenes, self.num_nodes = num_scenes, num_nodes
        self.max_desc = int(counts.max())

    def to_scene(self, x: Tensor) -> Tensor:
        """(D, N, ...) -> (B, D_max * N, ...); slots of absent descriptions are zero."""
        out = x.new_zeros(self.num_scenes, self.max_desc, *x.shape[1:])
        out = out.index_put((self.scene, self.local), x)
        return out.flatten(1, 2)

    def to_desc(self, xs: Tensor) -> Tensor:
        """(B, D_max * N, ...) -> (D, N, ...)."""
        return xs.unflatten(1, (self.max_desc, self.num_nodes))[self.scene, self.local]

    def rows(self, node: Tensor) -> Tensor:
        """Scene-view row of node ``node[d]`` (D,) of every description."""
        return self.local * self.num_nodes + node


class TextLocalizationModule(nn.Module):
    """Word-query decoder of RG-SAN (spec §4.1-§4.2): DDI, position initialisation, 6 conditional decoder layers
    with RPE, attention masks, position refinement and the mask / score heads.

    Args:
        sp_channels: superpoint feature width (32, the U-Net output).
        dim, num_heads, ffn_dim, num_layers: 256, 8, 1024, 6.
        num_relations: size of the edge-label vocabulary (40 UD labels + ``<unk>``).
        lap_dim: Laplacian PE width (5).
        attn_mask_threshold: a superpoint is masked for a query when sigmoid(mask logit) < this (0.1).
        position_refinement: False keeps every query at its initial position (no offset MLP): positions are
            used only for the Fourier query encoding and are not refined (the model then reports them unsupervised).
        use_rpe: add the contextual relative position encoding to the cross-attention (implied off without
            position refinement, which fixes the positions the RPE would relate).
        mask_position_prior: add ``-sum_axis softplus(a(q)) * (c_s - p_q)^2`` to every mask logit, a Gaussian
            prior around the query's current position with a per-query, per-axis width (``a`` linear, initialised to
            a weak prior). Not in the published model (False): its mask head is blind to position, so two instances
            of the same class get the same logit unless the backbone tells them apart. The mask loss flows into the
            position through this term, so it also trains the refinement.
    """

    def __init__(self, sp_channels: int = 32, dim: int = 256, num_heads: int = 8, ffn_dim: int = 1024,
                 num_layers: int = 6, num_relations: int = 41, lap_dim: int = 5, attn_mask_threshold: float = 0.1,
                 position_refinement: bool = True, use_rpe: bool = True, mask_position_prior: bool = False) -> None:
        super().__init__()
        self.num_layers, self.num_heads = num_layers, num_heads
        self.attn_mask_threshold = attn_mask_threshold
        self.position_refinement = position_refinement
        self.use_rpe = use_rpe and position_refinement
        # Query nodes (§4.1): a learned ROOT vector (= the bias of the original Linear(1 -> 256) applied to 0).
        self.root = nn.Parameter(torch.empty(dim).uniform_(-1.0, 1.0))
        self.lap_proj = nn.Linear(lap_dim, dim)
        self.edge_embed = nn.Embedding(num_relations, dim)
        # Superpoint side.
        self.input_proj = nn.Sequential(nn.Linear(sp_channels, dim), nn.LayerNorm(dim), nn.ReLU())
        self.mask_embed = mlp([sp_channels, dim, dim])
        # Position initialisation by cross-attention (explicit projections, no positional encoding).
        self.init_q, self.init_k, self.init_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.init_out = nn.Linear(dim, dim)
        self.init_norm = nn.LayerNorm(dim)
        # Two separate Fourier encoders: queries and keys hold different random B (kept for parity).
        self.query_fourier, self.key_fourier = FourierEmbedding(dim), FourierEmbedding(dim)
        self.ref_point_head = mlp([dim, dim, dim])
        # The last DDI layer's edge output is never read: its edge update is skipped (and frozen, ddi.py).
        self.ddi = nn.ModuleList(DDILayer(dim, num_heads, ffn_dim, update_edges=i < num_layers - 1)
                                 for i in range(num_layers))
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, ffn_dim, self.use_rpe) for _ in range(num_layers))
        # Heads shared by all predictions.
        self.out_norm = nn.LayerNorm(dim)
        self.score_head = mlp([dim, dim, 1])
        # Only the refinement reads the decoder norm: built with it, so that no parameter goes without a gradient.
        self.decoder_norm = nn.LayerNorm(dim) if position_refinement else None
        self.offset = mlp([dim, dim, dim, 3]) if position_refinement else None
        if self.offset is not None:  # zero-initialised: refinement starts as the identity
            nn.init.zeros_(self.offset[-1].weight)
            nn.init.zeros_(self.offset[-1].bias)
        self.prior_width = nn.Linear(dim, 3) if mask_position_prior else None
        if self.prior_width is not None:
            # softplus(-3) = 0.05 per m^2: a superpoint 3 m away starts 0.45 logits lower, so the head starts close
            # to the published, position-blind one and learns how sharp the prior may be.
            nn.init.zeros_(self.prior_width.weight)
            nn.init.constant_(self.prior_width.bias, -3.0)

    def forward(self, words: Tensor, node_mask: Tensor, lap_pe: Tensor, relation: Tensor, src: Tensor, dst: Tensor,
                select: Tensor, sp_feats: Tensor, sp_centers: Tensor, sp_pad: Tensor, desc_scene: Tensor) -> TLMOutputs:
        """Args:
            words: (D, N - 1, C) projected word features (rows beyond a description's words are ignored).
            node_mask: (D, N) bool real nodes; lap_pe: (D, N, 5) (signs already flipped when training).
            relation, src, dst: (E,) edge relation ids and flat node rows ``d * N + k`` (dependent -> governor).
            select: (D,) int64 node index of the output query (RTS word, or root word).
            sp_feats: (B, S, 32) pooled superpoint features; sp_centers: (B, S, 3) metres; sp_pad: (B, S) bool
                True on padding columns.
            desc_scene: (D,) int64 scene of each description.
        """
        d, n = node_mask.shape
        b = sp_feats.shape[0]
        layout = SceneLayout(desc_scene, b, n)
        rows = layout.rows(select)
        x = torch.cat([self.root.expand(d, 1, -1), words], 1) + self.lap_proj(lap_pe)
        edges = self.edge_embed(relation)

        memory, mask_feats = self.input_proj(sp_feats), self.mask_embed(sp_feats)
        lo = sp_centers.masked_fill(sp_pad[..., None], float("inf")).amin(1, keepdim=True)  # (B, 1, 3)
        extent = (sp_centers.masked_fill(sp_pad[..., None], float("-inf")).amax(1, keepdim=True) - lo).clamp_min(0.01)

        def normalise(p: Tensor) -> Tensor:
            return (p - lo) / extent

        key_pos = self.key_fourier(normalise(sp_centers))
        masks, scores, positions = [], [], []
        blocked: Tensor | None = None
        ref: Tensor | None = None
        for i in range(self.num_layers):
            x, edges = self.ddi[i](x, node_mask, edges, src, dst)
            if i == 0:
                xs, weights = self._init_queries(layout.to_scene(x), memory, sp_pad)
                # Every word starts at the attention-weighted mean of the superpoint centres (metres).
                ref = weights @ sp_centers
                m, s, _ = self._predict(xs, mask_feats, sp_pad, desc_scene, rows, ref, sp_centers)  # unmasked
                masks.append(m)
                scores.append(s)
                positions.append(ref[desc_scene, rows])
                x = layout.to_desc(xs)
            sine = self.query_fourier(normalise(ref))
            x = self.layers[i].self_attention(x, layout.to_desc(self.ref_point_head(sine)), node_mask)
            bins = relative_bins(ref, sp_centers) if self.use_rpe else None
            xs = self.layers[i].cross_and_ffn(layout.to_scene(x), sine, memory, key_pos, blocked, bins)
            new_ref = (ref + self.offset(self.decoder_norm(xs))
                       if self.offset is not None and self.decoder_norm is not None else ref)
            m, s, blocked = self._predict(xs, mask_feats, sp_pad, desc_scene, rows, new_ref, sp_centers)
            masks.append(m)
            scores.append(s)
            positions.append(new_ref[desc_scene, rows])
            # Iterative refinement: the next layer starts from the new position, without gradient through it.
            ref = new_ref.detach()
            x = layout.to_desc(xs)
        return TLMOutputs(torch.stack(masks), torch.stack(scores), torch.stack(positions), layout.to_desc(ref))

    def _init_queries(self, xs: Tensor, memory: Tensor, sp_pad: Tensor) -> tuple[Tensor, Tensor]:
        """Text-driven position initialisation (§4.2.2): one cross-attention without positional encoding.

        Returns the updated (B, Q, C) queries and the head-averaged attention weights (B, Q, S).
        """
        b, q_len, c = xs.shape
        h = self.num_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, -1, h, c // h).transpose(1, 2)

        attn = attention_weights(heads(self.init_q(xs)) / math.sqrt(c // h), heads(self.init_k(memory)),
                                 sp_pad[:, None, :])
        out = (attn @ heads(self.init_v(memory))).transpose(1, 2).reshape(b, q_len, c)
        return self.init_norm(xs + self.init_out(out)), attn.mean(1)

    def _predict(self, xs: Tensor, mask_feats: Tensor, sp_pad: Tensor, desc_scene: Tensor, rows: Tensor,
                 ref: Tensor, sp_centers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mask logits of every query, the output queries' masks and scores, and the next attention mask.

        ``ref`` (B, Q, 3) metres is the queries' position at this prediction (used by the optional position
        prior only); ``sp_centers`` (B, S, 3) metres.

        Returns ``(masks (D, S), scores (D,), blocked (B, Q, S) bool)``. A superpoint is blocked for a query
        when sigmoid(logit) < threshold or it is padding; a row that would be fully blocked is opened on all the
        scene's superpoints. The mask is detached (no gradient through attention masks).
        """
        q = self.out_norm(xs)
        logits = torch.einsum("bqc,bsc->bqs", q, mask_feats)
        if self.prior_width is not None:
            width = F.softplus(self.prior_width(q))  # (B, Q, 3) per m^2
            # sum_k w_k (c_k - p_k)^2 expanded into three matmuls: no (B, Q, S, 3) tensor per prediction, which
            # at ScanRefer size (Q ~ 1.2k word queries, S ~ 5k superpoints) would be ~80 MB kept for backward.
            dist = (width @ sp_centers.square().transpose(1, 2) - 2 * (width * ref) @ sp_centers.transpose(1, 2)
                    + (width * ref.square()).sum(-1, keepdim=True))
            logits = logits - dist
        with torch.no_grad():
            pad = sp_pad[:, None, :]
            blocked = (logits.sigmoid() < self.attn_mask_threshold) | pad
            blocked = torch.where(blocked.all(-1, keepdim=True), pad, blocked)
        selected = q[desc_scene, rows]
        return logits[desc_scene, rows], self.score_head(selected).squeeze(-1), blocked
