"""Convolutional spatial prior beside the ViT (ViT-Adapter's Spatial Prior Module, Chen et al., ICLR 2023).

A plain ViT sees the image through ``patch x patch`` tokens only; its pyramid levels finer than the patch are
upsampled from them. ViT-Adapter adds a small ResNet-style convolutional branch on the *image* that gives real
stride 4 / 8 / 16 / 32 maps with local detail (edges, colour regions, small shapes). The heads add those maps to
their own features of the same stride (ViT-Adapter injects them into the ViT through deformable attention; a sum at
matched strides keeps every size as it was): box retrieval to the ViTDet pyramid levels before RoI-align
(``grounding.retrieval.BoxRetriever``), DIT to the image embedding before SAM's mask decoder (``segmentation.DIT``).

Layout (widths ``c``, 2c, 4c, 4c as ViT-Adapter's ``inplanes`` 64):
stem = 3x3/2 conv -> norm -> ReLU -> 3x3 conv -> norm -> ReLU -> 3x3 conv -> norm -> ReLU -> 3x3/2 max-pool (stride 4);
then one 3x3/2 conv -> norm -> ReLU per further level (strides 8, 16, 32); a 1x1 projection to the pyramid's ``dim``
for each level that is used. Only the stages the pyramid needs are built (no unused parameters under DDP).
Normalisation is GroupNorm rather than ViT-Adapter's SyncBatchNorm: a few images per device, and results that do not
depend on how a batch is split across processes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["SpatialPrior"]

STRIDES = (4, 8, 16, 32)


def _conv(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(min(8, c_out), c_out),
            nn.ReLU(inplace=True)]


class SpatialPrior(nn.Module):
    """Image -> one ``dim``-channel map per requested stride.

    Args:
        strides: canvas pixels per cell of each wanted map, each from (4, 8, 16, 32), in the pyramid's level order.
        dim: output channels (the pyramid's level width, so the maps add to its levels).
        width: ``c``, the stem's width (ViT-Adapter: 64).
        in_chans: image channels.
        zero_init: zero the 1 x 1 projections, so that a model with pretrained weights starts exactly as without
            the prior (the projections still get gradients from the first step).
    """

    def __init__(self, strides: Sequence[float], dim: int, width: int = 64, in_chans: int = 3,
                 zero_init: bool = False) -> None:
        super().__init__()
        wanted = [int(round(s)) for s in strides]
        bad = [s for s, w in zip(strides, wanted) if w not in STRIDES or abs(s - w) > 1e-6]
        if bad:
            raise ValueError(f"SpatialPrior: level strides must be in {STRIDES}, got {list(strides)}")
        self.strides = tuple(wanted)
        depth = STRIDES.index(max(wanted)) + 1
        widths = [width, 2 * width, 4 * width, 4 * width][:depth]
        stages: list[nn.Module] = [nn.Sequential(*_conv(in_chans, width, 2), *_conv(width, width, 1),
                                                 *_conv(width, width, 1), nn.MaxPool2d(3, 2, 1))]
        for k in range(1, depth):
            stages.append(nn.Sequential(*_conv(widths[k - 1], widths[k], 2)))
        self.stages = nn.ModuleList(stages)
        self.proj = nn.ModuleDict({str(s): nn.Conv2d(widths[STRIDES.index(s)], dim, 1) for s in sorted(set(wanted))})
        for proj in self.proj.values() if zero_init else ():
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(B, in_chans, S, S) -> [(B, dim, S / stride, S / stride) for each stride in ``strides``]."""
        maps: dict[int, Tensor] = {}
        x = images
        for stride, stage in zip(STRIDES, self.stages):
            x = stage(x)
            if str(stride) in self.proj:
                maps[stride] = self.proj[str(stride)](x)
        return [maps[s] for s in self.strides]

    def add_to(self, features: Sequence[Tensor], images: Tensor) -> list[Tensor]:
        """``features[i]`` (B, dim, h_i, w_i) plus the map of ``strides[i]`` computed from ``images``.

        The prior's maps are ceil(S / stride) a side; where a feature grid differs (a canvas that is not a
        multiple of the largest stride) the map is resampled bilinearly to it.
        """
        priors = self(images)
        if len(priors) != len(features):
            raise ValueError(f"SpatialPrior: {len(features)} feature maps for {len(priors)} strides {self.strides}")
        return [f + (p if p.shape[-2:] == f.shape[-2:] else
                     F.interpolate(p, size=f.shape[-2:], mode="bilinear", align_corners=False))
                for f, p in zip(features, priors)]
