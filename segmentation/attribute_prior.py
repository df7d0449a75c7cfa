"""Attribute matching prior: how well each pixel's object matches the attributes the sentence gives its referent.

Not DIT's: an option for from-scratch training (``DIT(attribute_prior=True)``), built on the per-pixel attribute
head (``DIT(attribute_classes=...)``, :mod:`datasets.object_maps`).

- The sentence side: per attribute kind k (category, colour, size), a learned query attends over the text slots and
  a linear layer gives ``Q_k``, a distribution over the kind's values: "which colour does the sentence give the
  referent". It is trained directly (the criterion's ``loss_attr_text``) against the referred object's own
  labels, so it learns to read the referent's words and not the anchor's ("the yellow cup below the *red* car").
- The pixel side: ``P_k(. | x)``, the softmax of the attribute head at grid position x.
- The prior: ``m_k(x) = log sum_v Q_k(v) P_k(v | x)``, the log-probability that the object at x has the value the
  sentence asks for; a 1x1 convolution of the K maps is added to the image embedding before the mask decoder.

When the sentence does not name a kind (a relation's referent "the object below ..."), ``Q_k`` is the class prior
and ``m_k`` separates objects from background only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttributePrior"]

EPS = 1e-6  # keeps log() finite where the head is certain of another value


class AttributePrior(nn.Module):
    """Sentence attribute distributions and the per-pixel matching map (see the module docstring).

    Args:
        classes: values per kind, background included (the attribute head's ``attribute_classes``).
        text_dim: C_text of the text slots.
        dim: C of the image embedding the map is added to.
        zero_init: zero-initialise the 1x1 convolution, so that the embedding passes unchanged at step 0 (for
            pretrained SAM weights, as the pixel-word fusion).
    """

    def __init__(self, classes: Sequence[int], text_dim: int, dim: int, zero_init: bool = False) -> None:
        super().__init__()
        self.classes = tuple(int(n) for n in classes)
        K = len(self.classes)
        self.query = nn.Parameter(torch.randn(K, text_dim) * text_dim ** -0.5)
        self.key = nn.Linear(text_dim, text_dim)
        self.heads = nn.ModuleList(nn.Linear(text_dim, n) for n in self.classes)
        self.embed = nn.Conv2d(K, dim, 1)
        if zero_init:
            nn.init.zeros_(self.embed.weight)
            nn.init.zeros_(self.embed.bias)

    def text_logits(self, text: Tensor, text_mask: Tensor) -> tuple[Tensor, ...]:
        """text (B, T, C_text), text_mask (B, T) bool -> one (B, n_k) logit vector per kind."""
        keep = text_mask | ~text_mask.any(dim=1, keepdim=True)  # a row without text attends to every slot
        scores = torch.einsum("kc,btc->bkt", self.query, self.key(text)) / text.shape[-1] ** 0.5
        weights = scores.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1)  # (B, K, T)
        pooled = torch.einsum("bkt,btc->bkc", weights, text)
        return tuple(head(pooled[:, k]) for k, head in enumerate(self.heads))

    def forward(self, attr_logits: Sequence[Tensor], text_logits: Sequence[Tensor]) -> Tensor:
        """Per-kind pixel logits (B, n_k, h, w) and sentence logits (B, n_k) -> (B, C, h, w) to add to the image
        embedding."""
        maps = []
        for pix, txt in zip(attr_logits, text_logits, strict=True):
            match = torch.einsum("bvhw,bv->bhw", F.softmax(pix, dim=1), F.softmax(txt, dim=1))
            maps.append(torch.log(match + EPS))
        return self.embed(torch.stack(maps, dim=1))
