"""Analytical matmul FLOPs of the encoder, per block, dense or compressed (token-compression spec §3.2, §3.3, §5.2).

FLOPs = 2 × multiply-accumulates, per image, matmuls and convolutions only (softmax, LayerNorm, GELU, sort,
gather and scatter are free here and show up only in latency). A block with ``rows`` image rows through the
MLP, ``qkv_rows`` rows through qkv / proj, ``attn_q`` query rows attending ``attn_k`` keys each, a rel-pos
lookup over ``table`` entries per query and T text slots costs, for width C and MLP width m·C:

- linear: 2·qkv_rows·C·3C (qkv) + 2·qkv_rows·C² (proj) + 4·rows·C·mC (MLP) + T·(8C² + 4·C·mC);
- attention: 4·attn_q·attn_k·C (QKᵀ and AV over all heads) + 4·attn_q·T·C (image → text)
  + 4·T·(T + rows)·C (text → [text ; image]);
- rel-pos: 2·attn_q·table·C (q · R for both axes; dense SAM: table = h + w; gathered: (2h − 1) + (2w − 1));
- compressor: what :class:`~grounding.backbone.compression.BlockTrace` recorded (metric, similarities, scorer).

Dense SAM ViT-B at 1024² gives 972.1 GFLOPs with the patch embedding and the neck (spec §3.2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from grounding.backbone.compression import BlockTrace, dense_block_trace

if TYPE_CHECKING:  # pragma: no cover
    from grounding.backbone.sam_vit import TextAwareViT

__all__ = ["block_flops", "dense_trace", "encoder_flops", "stem_neck_flops"]


def block_flops(t: BlockTrace, dim: int, mlp_ratio: float = 4.0) -> dict[str, float]:
    """FLOPs of one block from its trace: ``linear``, ``attention``, ``relpos``, ``compressor``, ``total``."""
    c, hid, n_text = float(dim), float(mlp_ratio) * dim, t.text
    linear = 2 * t.qkv_rows * c * 3 * c + 2 * t.qkv_rows * c * c + 4 * t.rows * c * hid
    attention = 4.0 * t.attn_q * t.attn_k * c
    if n_text:
        linear += n_text * (8 * c * c + 4 * c * hid)
        attention += 4.0 * t.attn_q * n_text * c + 4.0 * n_text * (n_text + t.rows) * c
    relpos = 2.0 * t.attn_q * t.table * c
    total = linear + attention + relpos + t.compressor
    return {"linear": linear, "attention": attention, "relpos": relpos, "compressor": t.compressor, "total": total}


def dense_trace(vit: TextAwareViT, hw: tuple[int, int], text: int = 0) -> list[BlockTrace]:
    """Traces of the uncompressed encoder on an (h, w) token grid with T text slots (no forward pass needed)."""
    windowed = not vit.global_all_blocks
    return [dense_block_trace(vit, i, hw, windowed and blk.window_size > 0, text) for i, blk in enumerate(vit.blocks)]


def stem_neck_flops(vit: TextAwareViT, image_hw: tuple[int, int]) -> float:
    """FLOPs of the patch embedding and the neck, counted by ``FlopCounterMode`` on meta tensors (no compute)."""
    meta = torch.device("meta")
    c_in = vit.patch_embed.proj[0].in_channels if isinstance(vit.patch_embed.proj, torch.nn.Sequential) \
        else vit.patch_embed.proj.in_channels
    h, w = image_hw[0] // vit.patch_size, image_hw[1] // vit.patch_size
    stem = _meta_copy(vit.patch_embed, meta)
    neck = _meta_copy(vit.neck, meta)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        stem(torch.empty(1, c_in, *image_hw, device=meta))
        neck(torch.empty(1, vit.embed_dim, h, w, device=meta))
    return float(counter.get_total_flops())


def _meta_copy(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    import copy

    clone = copy.deepcopy(module)
    return clone.to_empty(device=device)


def encoder_flops(vit: TextAwareViT, image_hw: tuple[int, int], trace: list[BlockTrace] | None = None,
                  text: int = 0) -> dict[str, Any]:
    """Per-block and total FLOPs per image; ``trace`` None = the dense encoder.

    Returns ``blocks`` (one :func:`block_flops` dict per block), ``stem_neck``, ``model`` (blocks without
    compressor + stem/neck) and ``total`` (model + compressor).
    """
    hw = (image_hw[0] // vit.patch_size, image_hw[1] // vit.patch_size)
    trace = trace if trace is not None else dense_trace(vit, hw, text)
    mlp_ratio = vit.blocks[0].mlp.lin1.out_features / vit.embed_dim
    blocks = [block_flops(t, vit.embed_dim, mlp_ratio) for t in trace]
    fixed = stem_neck_flops(vit, image_hw)
    compressor = sum(b["compressor"] for b in blocks)
    model = fixed + sum(b["total"] for b in blocks) - compressor
    return {"blocks": blocks, "stem_neck": fixed, "compressor": compressor, "model": model,
            "total": model + compressor}
