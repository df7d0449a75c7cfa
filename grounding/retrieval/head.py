"""The retrieval head: a small transformer over [text tokens ; box tokens] that scores every candidate
(box-retrieval spec §4.5, option B, the default).

Boxes attend to each other and to the words, so relational expressions ("the cup left of the red star") can be
expressed; there is no index embedding, so the scores are permutation-equivariant: reordering the candidates
reorders the logits and nothing else (tests/retrieval). An optional learned "no target" token competes in the
softmax (spec §4.5, for expressions whose object is among no candidate).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["RetrievalHead"]


class RetrievalHead(nn.Module):
    """Pre-LN transformer encoder over text and box tokens, then ``Linear(d_model -> 1)`` on each box token.

    Args:
        d_model: token width (text tokens must already be projected to it).
        num_layers, num_heads, ffn_dim, dropout: of the encoder (spec: 2, 8, 1024, 0.1).
        no_target: add a learned "no target" token whose output gives one more logit per query.
    """

    def __init__(self, d_model: int = 256, num_layers: int = 2, num_heads: int = 8, ffn_dim: int = 1024,
                 dropout: float = 0.1, no_target: bool = False) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"RetrievalHead: d_model {d_model} is not divisible by num_heads {num_heads}")
        self.d_model, self.no_target = d_model, no_target
        self.type_embed = nn.Parameter(torch.zeros(3, d_model))  # text, box, no-target
        nn.init.normal_(self.type_embed, std=0.02)
        self.no_target_token = nn.Parameter(torch.zeros(1, 1, d_model)) if no_target else None
        layer = nn.TransformerEncoderLayer(d_model, num_heads, ffn_dim, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.score = nn.Linear(d_model, 1)

    def forward(self, text: Tensor, text_mask: Tensor, boxes: Tensor,
                box_valid: Tensor) -> tuple[Tensor, Tensor | None]:
        """Score the candidates of every query.

        Args:
            text: (Q, L, d) projected text tokens; text_mask: (Q, L) bool, True for real tokens.
            boxes: (Q, N, d) box tokens of each query's image; box_valid: (Q, N) bool, True for real candidates.

        Returns:
            logits (Q, N) float, -inf at padded candidates; no-target logits (Q,) or None.
        """
        Q, L, _ = text.shape
        N = boxes.shape[1]
        parts = [text + self.type_embed[0], boxes + self.type_embed[1]]
        keep = [text_mask.bool(), box_valid.bool()]
        if self.no_target_token is not None:
            parts.append((self.no_target_token + self.type_embed[2]).expand(Q, 1, -1))
            keep.append(torch.ones(Q, 1, dtype=torch.bool, device=text.device))
        x = self.encoder(torch.cat(parts, 1), src_key_padding_mask=~torch.cat(keep, 1))
        out = self.score(self.norm(x)).squeeze(-1)  # (Q, L + N [+ 1])
        logits = out[:, L:L + N].masked_fill(~box_valid.bool(), float("-inf"))
        return logits, (out[:, L + N] if self.no_target_token is not None else None)
