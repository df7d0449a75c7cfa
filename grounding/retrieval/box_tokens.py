"""Box tokens: one token per candidate box from the common vision backbone (box-retrieval spec §4.3).

1. :class:`SimplePyramid` (ViTDet's simple feature pyramid) turns the backbone's single-scale neck map (stride s)
   into several levels: scale 4 and 2 by transposed convolutions (strides s/4, s/2), 1 (identity), 0.5 by max-pool
   (stride 2s); each level then 1x1 conv -> LayerNorm -> 3x3 conv -> LayerNorm to ``dim`` channels.
2. :class:`BoxTokenizer` RoI-aligns every box on every level (``torchvision.ops.roi_align``, ``aligned=True``,
   ``sampling_ratio`` 2, ``spatial_scale`` = 1 / stride), pools each R x R grid (``mean``, the spec's choice;
   ``meanmax``: mean and max side by side; ``flatten``: the whole R x R grid, so the MLP sees the object's layout
   inside its box, which a backbone trained from scratch has not yet folded into its channels), concatenates the levels,
   **adds** the sine embedding of the normalised box (:func:`sine_box_embedding`) and projects with a 2-layer GELU
   MLP to ``d_model``.

Frames: boxes enter twice: xyxy in *canvas* pixels (for RoI-align on the feature maps, whose pixel (0, 0) covers
canvas [0, stride)) and as (cx, cy, w, h) normalised by the *original* image size (for the embedding, so that
"left" means the same whatever the padding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

__all__ = ["BoxTokenizer", "LayerNorm2d", "SimplePyramid", "level_strides", "sine_box_embedding"]

POOLS = ("mean", "meanmax", "flatten")


def sine_box_embedding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """DAB-DETR's 4-d sine embedding (``gen_sineembed_for_position``) of normalised boxes.

    Args:
        boxes: (..., 4) (cx, cy, w, h) in [0, 1].
        dim: output size, a multiple of 8 (dim / 4 per coordinate).

    Returns:
        (..., dim): per coordinate, ``coord * 2 pi / temperature^(2 floor(k / 2) / (dim / 4))`` with sine on even
        and cosine on odd k, interleaved; the four blocks in the order (y, x, w, h).
    """
    if dim % 8:
        raise ValueError(f"sine_box_embedding needs dim divisible by 8, got {dim}")
    d = dim // 4
    k = torch.arange(d, dtype=torch.float32, device=boxes.device)
    dim_t = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / d)
    pos = boxes.float()[..., None] * (2 * math.pi) / dim_t  # (..., 4, d)
    emb = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], -1).flatten(-2)  # interleaved sin, cos
    cx, cy, w, h = emb.unbind(-2)
    return torch.cat([cy, cx, w, h], -1)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map (as SAM's and ViTDet's necks)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class SimplePyramid(nn.Module):
    """ViTDet's simple feature pyramid from one (B, C, h, w) map of stride s.

    Args:
        in_chans: C of the backbone map; dim: channels of every level.
        scales: resampling factors, from {4, 2, 1, 0.5}; level stride = s / scale.
    """

    def __init__(self, in_chans: int, dim: int, scales: Sequence[float] = (2.0, 1.0, 0.5)) -> None:
        super().__init__()
        self.scales = tuple(float(s) for s in scales)
        levels = []
        for scale in self.scales:
            if scale == 4.0:
                up: list[nn.Module] = [nn.ConvTranspose2d(in_chans, in_chans // 2, 2, 2), LayerNorm2d(in_chans // 2),
                                       nn.GELU(), nn.ConvTranspose2d(in_chans // 2, in_chans // 4, 2, 2)]
                c = in_chans // 4
            elif scale == 2.0:
                up, c = [nn.ConvTranspose2d(in_chans, in_chans // 2, 2, 2)], in_chans // 2
            elif scale == 1.0:
                up, c = [], in_chans
            elif scale == 0.5:
                up, c = [nn.MaxPool2d(2, 2)], in_chans
            else:
                raise ValueError(f"SimplePyramid scales must be in (4, 2, 1, 0.5), got {scale}")
            levels.append(nn.Sequential(*up, nn.Conv2d(c, dim, 1, bias=False), LayerNorm2d(dim),
                                        nn.Conv2d(dim, dim, 3, padding=1, bias=False), LayerNorm2d(dim)))
        self.levels = nn.ModuleList(levels)

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, C, h, w) -> one (B, dim, h * scale, w * scale) map per scale."""
        return [level(x) for level in self.levels]


class BoxTokenizer(nn.Module):
    """RoI features + sine box embedding -> one ``d_model`` token per box.

    Args:
        level_dim: channels of each pyramid level; levels: number of levels L.
        d_model: token width.
        roi_size: R, RoI-align output side (7 in the spec).
        pool: ``"mean"``, ``"meanmax"`` or ``"flatten"`` of the R x R grid.
        box_embedding: add the sine embedding (the spec: never omit it; False only for the ablation).
    """

    def __init__(self, level_dim: int, levels: int, d_model: int, roi_size: int = 7, pool: str = "mean",
                 box_embedding: bool = True) -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"BoxTokenizer.pool must be one of {POOLS}, got {pool!r}")
        self.roi_size, self.pool, self.box_embedding = roi_size, pool, box_embedding
        self.feat_dim = level_dim * levels * {"mean": 1, "meanmax": 2, "flatten": roi_size * roi_size}[pool]
        if self.feat_dim % 8:
            raise ValueError(f"BoxTokenizer: RoI feature size {self.feat_dim} must be divisible by 8")
        self.mlp = nn.Sequential(nn.Linear(self.feat_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def roi_features(self, levels: Sequence[Tensor], strides: Sequence[float], canvas_boxes: Tensor) -> Tensor:
        """(I, N, 4) canvas xyxy boxes -> (I, N, feat_dim) pooled RoI features of all levels."""
        I, N = canvas_boxes.shape[:2]
        index = torch.arange(I, device=canvas_boxes.device, dtype=canvas_boxes.dtype).repeat_interleave(N)
        rois = torch.cat([index[:, None], canvas_boxes.reshape(-1, 4)], 1)
        pooled = []
        for fmap, stride in zip(levels, strides):
            r = roi_align(fmap, rois.to(fmap.dtype), output_size=self.roi_size, spatial_scale=1.0 / stride,
                          sampling_ratio=2, aligned=True)  # (I * N, C, R, R)
            if self.pool == "flatten":
                pooled.append(r.flatten(1))
                continue
            pooled.append(r.mean((2, 3)))
            if self.pool == "meanmax":
                pooled.append(r.amax((2, 3)))
        return torch.cat(pooled, 1).reshape(I, N, -1)

    def forward(self, levels: Sequence[Tensor], strides: Sequence[float], canvas_boxes: Tensor,
                norm_boxes: Tensor) -> Tensor:
        """Tokens (I, N, d_model) from the levels, their strides (canvas pixels per cell), the (I, N, 4) canvas
        xyxy boxes and the (I, N, 4) normalised (cx, cy, w, h) boxes."""
        feats = self.roi_features(levels, strides, canvas_boxes)
        if self.box_embedding:
            feats = feats + sine_box_embedding(norm_boxes.clamp(0, 1), self.feat_dim).to(feats.dtype)
        return self.mlp(feats)


def level_strides(image_side: int, levels: Sequence[Tensor]) -> list[float]:
    """Canvas pixels per feature cell of each level (the canvas side over the map side)."""
    return [image_side / float(f.shape[-1]) for f in levels]

