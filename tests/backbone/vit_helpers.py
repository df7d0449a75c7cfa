"""Helpers shared by the SAM ViT tests."""

from __future__ import annotations

import torch
from torch import nn


def randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-zero rel-pos tables, position embedding, gates and LayerNorm affine (SAM zero-inits some of them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "rel_pos" in name or "pos_embed" in name or "norm" in name or "text_gate" in name:
                p.copy_(p + 0.3 * torch.randn(p.shape, generator=g))
