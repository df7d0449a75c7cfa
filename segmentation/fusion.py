"""Pixel-word attention with multiplicative fusion (LAVT's PWAM) on DIT's image embedding.

Not DIT's: an option for from-scratch training (``DIT(pixel_word_fusion=True)``). Every position of the image
embedding attends over the text slots, and the attended language vector *multiplies* a projection of the pixel's
feature before a residual update: a pixel feature that says "red" times a language vector that says "red" is
large, so conjunctions of attributes ("small red") become products the decoder can read, instead of sums that an
attention softmax must learn to separate.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["WordPixelFusion"]


class WordPixelFusion(nn.Module):
    """``x + out(LN(gelu(vis(x)) * attend(x, words)))`` per position of a (B, C, h, w) map.

    Args:
        dim: C, the image embedding's width.
        text_dim: C_text of the text slots.
        zero_init: zero-initialise the output projection (the map passes unchanged at step 0; for pretrained
            SAM weights).
    """

    def __init__(self, dim: int, text_dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(text_dim, dim)
        self.v = nn.Linear(text_dim, dim)
        self.vis = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        if zero_init:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, text: Tensor, text_mask: Tensor) -> Tensor:
        """x (B, C, h, w), text (B, T, C_text), text_mask (B, T) bool (True = real slot) -> (B, C, h, w)."""
        B, C, h, w = x.shape
        pix = x.flatten(2).transpose(1, 2)  # (B, N, C), row-major over the grid
        keep = text_mask | ~text_mask.any(dim=1, keepdim=True)  # a row without text attends to every slot
        # one head of width C: softmax(q k^T / sqrt(C)) v over the kept slots -> (B, N, C)
        lang = F.scaled_dot_product_attention(self.q(pix), self.k(text), self.v(text), attn_mask=keep[:, None, :])
        pix = pix + self.out(self.norm(F.gelu(self.vis(pix)) * lang))
        return pix.transpose(1, 2).reshape(B, C, h, w)
