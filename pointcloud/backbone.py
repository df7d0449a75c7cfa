"""Residual sparse U-Net of SPFormer, as used by RG-SAN, 3D-STMN and MDIN (rgsan-mdin spec §2).

The module tree reproduces the original attribute names exactly, so that the U-Net part of an official
SPFormer / RG-SAN / MDIN checkpoint (spconv 2.x, weights laid out ``[out, k, k, k, in]``) loads key for
key with :func:`pointcloud.checkpoint.load_state_dict_report`::

    input_conv.0                                   SubMConv3d 6 -> 32, k3, key subm1
    unet.blocks.block{0,1}.conv_branch.{0,2,3,5}   BN, SubMConv k3, BN, SubMConv k3 (ReLUs at 1 and 4)
    unet.blocks.block{r}.i_branch.0                1x1 SubMConv3d, only where channels change
    unet.conv.{0,2} / unet.deconv.{0,2}            BN + SparseConv3d k2 s2 / BN + SparseInverseConv3d k2
    unet.blocks_tail.block{0,1}...                 residual blocks 2C -> C, C -> C after the skip concat
    unet.u. ...                                    the next level, recursively (5 levels, 32 * (i + 1) channels)
    output_layer.0                                 BN (then ReLU), 32 channels per voxel

Convolution algorithm (spconv 2.3.6, read from the installed sources):
    spconv picks ``ConvAlgo.MaskImplicitGemm`` at construction for every kernel of at most 32 taps whenever the
    wheel is a CUDA build (``spconv-cu120`` is one, even on a machine without a GPU). That path is CUDA-only:
    ``ops.get_indice_pairs_implicit_gemm`` starts with ``torch.cuda.current_stream()`` (so CPU tensors fail with
    "Found no NVIDIA driver" on a machine without one) and allocates its pair tables on CUDA device 0 (so CPU
    tensors fail or mix devices on a machine with one). ``ConvAlgo.Native`` has a CPU implementation
    (gather -> GEMM -> scatter-add, forward and backward). ``SparseConvTensor(force_algo=...)`` looks like the
    switch for this but is stored and never read by the convolutions in 2.3.6, so it does nothing.
    Hence :meth:`SparseUNet.use_algorithm_for` sets every convolution's ``algo`` attribute from the input's
    device before each forward (cached per device type): Native on CPU, the construction-time default
    (implicit GEMM) on CUDA. Switching is safe because spconv 2.2+ keeps every weight in the KRSC layout
    whatever the algorithm (``spconv.constants.ALL_WEIGHT_IS_KRSC``), and all layers sharing an indice key
    get the same algorithm in the same forward, which spconv asserts.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

with warnings.catch_warnings():
    # spconv 2.3.6 decorates its autograd functions with the deprecated torch.cuda.amp.custom_fwd at import.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import spconv.pytorch as spconv
    from spconv.constants import ALL_WEIGHT_IS_KRSC
    from spconv.pytorch.conv import SparseConvolution
    from spconv.pytorch.modules import SparseModule

BN_EPS = 1e-4
BN_MOMENTUM = 0.1


def _norm(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class ResidualBlock(SparseModule):
    """Pre-activation residual block: ``conv_branch(x) + i_branch(x)`` on the same voxels (submanifold).

    ``conv_branch`` = BN -> ReLU -> SubMConv3d k3 -> BN -> ReLU -> SubMConv3d k3 (no biases, indice key
    ``indice_key`` so all blocks of a level share one neighbour table). ``i_branch`` is the identity, or a 1x1
    SubMConv3d without indice key when the channel count changes (1x1 convs never build a table).
    """

    def __init__(self, in_channels: int, out_channels: int, indice_key: str) -> None:
        super().__init__()
        # Keep the name ``i_branch.0`` in both cases: the checkpoint holds a weight there only when channels change.
        shortcut: nn.Module = (nn.Identity() if in_channels == out_channels
                               else spconv.SubMConv3d(in_channels, out_channels, kernel_size=1, bias=False))
        self.i_branch = spconv.SparseSequential(shortcut)
        self.conv_branch = spconv.SparseSequential(
            _norm(in_channels), nn.ReLU(inplace=True),  # in place is safe: BN's backward never reads its output
            spconv.SubMConv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False, indice_key=indice_key),
            _norm(out_channels), nn.ReLU(inplace=True),
            spconv.SubMConv3d(out_channels, out_channels, kernel_size=3, padding=1, bias=False, indice_key=indice_key),
        )

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        out = self.conv_branch(x)
        # spconv 2.x convolutions and replace_feature never write into x.features, so x is still the block input.
        return out.replace_feature(out.features + self.i_branch(x).features)


class UBlock(nn.Module):
    """One level of the U-Net and, recursively through ``self.u``, all coarser ones.

    Level ``level`` (1-based) runs ``block_reps`` residual blocks at ``channels[0]`` (key ``subm{level}``); if
    coarser levels remain, it downsamples (k2 s2, key ``spconv{level}``), runs the next level, upsamples with
    the inverse of that same convolution (so the output voxels are exactly this level's voxels, in order),
    concatenates [skip, upsampled] and reduces 2C -> C with ``blocks_tail``.
    """

    def __init__(self, channels: Sequence[int], block_reps: int = 2, level: int = 1) -> None:
        super().__init__()
        self.channels = list(channels)
        c0 = self.channels[0]
        key = f"subm{level}"
        self.blocks = spconv.SparseSequential(
            OrderedDict((f"block{r}", ResidualBlock(c0, c0, key)) for r in range(block_reps)))
        if len(self.channels) > 1:
            c1 = self.channels[1]
            self.conv = spconv.SparseSequential(
                _norm(c0), nn.ReLU(inplace=True),
                spconv.SparseConv3d(c0, c1, kernel_size=2, stride=2, bias=False, indice_key=f"spconv{level}"))
            self.u = UBlock(self.channels[1:], block_reps, level + 1)
            self.deconv = spconv.SparseSequential(
                _norm(c1), nn.ReLU(inplace=True),
                spconv.SparseInverseConv3d(c1, c0, kernel_size=2, bias=False, indice_key=f"spconv{level}"))
            # The original writes in_channels as c0 * (2 - r), which is 0 for a third block; only the first
            # tail block sees the concatenation.
            self.blocks_tail = spconv.SparseSequential(OrderedDict(
                (f"block{r}", ResidualBlock(2 * c0 if r == 0 else c0, c0, key)) for r in range(block_reps)))

    def forward(self, x: spconv.SparseConvTensor) -> spconv.SparseConvTensor:
        skip = self.blocks(x)
        if len(self.channels) == 1:
            return skip
        coarse = self.deconv(self.u(self.conv(skip)))
        # The inverse conv returns the indices its paired conv consumed, so rows of both tensors align.
        merged = skip.replace_feature(torch.cat((skip.features, coarse.features), dim=1))
        return self.blocks_tail(merged)


class SparseUNet(nn.Module):
    """SPFormer residual sparse U-Net: (V, in_channels) voxel features -> (V, base) voxel features.

    Args:
        in_channels: input channels per voxel (6: colour in [-1, 1] and ``xyz_middle`` in metres).
        base: channels of the first level and of the output; level i has ``base * (i + 1)``.
        levels: number of resolution levels (5: strides 1, 2, 4, 8, 16 voxels).
        block_reps: residual blocks per level in the encoder and in the decoder tail.
        frozen: call :meth:`freeze` at construction (no gradients, eval mode kept; spec D6).
    """

    def __init__(self, in_channels: int = 6, base: int = 32, levels: int = 5, block_reps: int = 2,
                 frozen: bool = False) -> None:
        super().__init__()
        if levels < 1 or block_reps < 1 or base < 1 or in_channels < 1:
            raise ValueError(f"SparseUNet: in_channels, base, levels and block_reps must be >= 1, got "
                             f"{in_channels}, {base}, {levels}, {block_reps}")
        self.in_channels = in_channels
        self.out_channels = base
        self.input_conv = spconv.SparseSequential(
            spconv.SubMConv3d(in_channels, base, kernel_size=3, padding=1, bias=False, indice_key="subm1"))
        self.unet = UBlock([base * (i + 1) for i in range(levels)], block_reps, level=1)
        self.output_layer = spconv.SparseSequential(_norm(base), nn.ReLU(inplace=True))
        for m in self.modules():
            if isinstance(m, nn.BatchNorm1d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # What spconv chose for this build at construction; restored whenever the input is on CUDA.
        self._default_algo = {name: m.algo for name, m in self.named_modules() if isinstance(m, SparseConvolution)}
        self._algo_device_type: str | None = None
        self._frozen = False
        self._frozen_keeps_eval = True
        if frozen:
            self.freeze()

    # ------------------------------------------------------------------ algorithm per device
    def use_algorithm_for(self, device: torch.device | str) -> None:
        """Set every sparse convolution's algorithm for inputs on ``device`` (see the module docstring).

        CPU -> ``ConvAlgo.Native``; any other device -> spconv's construction-time default (implicit GEMM on
        CUDA builds). Cached per device type, so a steady run pays one string comparison per forward.
        """
        kind = torch.device(device).type
        if kind == self._algo_device_type:
            return
        if not ALL_WEIGHT_IS_KRSC:  # pragma: no cover - spconv < 2.2 ties the weight layout to the algorithm
            raise RuntimeError("this spconv build ties weight layout to the conv algorithm; switching is unsafe")
        for name, m in self.named_modules():
            if isinstance(m, SparseConvolution):
                m.algo = spconv.ConvAlgo.Native if kind == "cpu" else self._default_algo[name]
        self._algo_device_type = kind

    # ------------------------------------------------------------------ freezing (spec §8, D6)
    def freeze(self, keep_eval: bool = True) -> SparseUNet:
        """Stop gradients to every parameter and, with ``keep_eval``, stay in eval mode from now on.

        With ``keep_eval`` a parent's ``.train()`` no longer reaches the BatchNorms, so their running statistics
        stay those of the checkpoint (the toolkit behaviour). ``keep_eval=False`` reproduces the originals
        (defect D6): parameters frozen but BN back in train mode, i.e. batch statistics and drifting buffers.
        """
        self._frozen = True
        self._frozen_keeps_eval = keep_eval
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(self.training)

    def unfreeze(self) -> SparseUNet:
        """Undo :meth:`freeze`: parameters trainable again and ``.train()`` obeyed."""
        self._frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        return self

    @property
    def is_frozen(self) -> bool:
        return self._frozen

    def train(self, mode: bool = True) -> SparseUNet:
        """``nn.Module.train``, except that a frozen U-Net (``keep_eval``) always goes to eval mode."""
        if self._frozen and self._frozen_keeps_eval:
            mode = False
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def forward(self, voxel_feats: Tensor, voxel_coords: Tensor, spatial_shape: Sequence[int] | Tensor,
                batch_size: int) -> Tensor:
        """Run the U-Net on a batch of voxelised scenes.

        Args:
            voxel_feats: (V, in_channels) float voxel features (mean of the point features per voxel).
            voxel_coords: (V, 4) int ``[batch, x, y, z]``, voxel units (1 voxel = 2 cm in the recipes), every
                coordinate in ``[0, spatial_shape)``; int64 is converted to the int32 spconv needs.
            spatial_shape: 3 ints, the grid size in voxels per axis (x, y, z).
            batch_size: number of scenes B; batch indices lie in ``[0, B)``.

        Returns:
            (V, base) features, row v for input voxel v (same order). Gather to points with
            :func:`pointcloud.superpoint_pool.voxel_to_point` and the point->voxel index.

        Raises:
            ValueError: on malformed shapes, an empty input or coordinates outside the grid (spconv would read
                out of bounds instead of failing).
        """
        shape = [int(s) for s in (spatial_shape.tolist() if isinstance(spatial_shape, Tensor) else spatial_shape)]
        self._check_inputs(voxel_feats, voxel_coords, shape, batch_size)
        self.use_algorithm_for(voxel_feats.device)
        x = spconv.SparseConvTensor(voxel_feats.contiguous(), voxel_coords.to(torch.int32).contiguous(), shape,
                                    int(batch_size))
        x = self.output_layer(self.unet(self.input_conv(x)))
        return x.features

    def _check_inputs(self, feats: Tensor, coords: Tensor, shape: list[int], batch_size: int) -> None:
        if feats.ndim != 2 or feats.shape[1] != self.in_channels:
            raise ValueError(f"SparseUNet: voxel_feats must be (V, {self.in_channels}), got {tuple(feats.shape)}")
        if coords.ndim != 2 or coords.shape[1] != 4 or coords.shape[0] != feats.shape[0]:
            raise ValueError(f"SparseUNet: voxel_coords must be (V, 4) [batch, x, y, z] with V = {feats.shape[0]}, "
                             f"got {tuple(coords.shape)}")
        if coords.device != feats.device:
            raise ValueError(f"SparseUNet: voxel_coords on {coords.device} but voxel_feats on {feats.device}")
        if feats.shape[0] == 0:
            raise ValueError("SparseUNet: no voxels (an empty scene cannot go through the U-Net)")
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"SparseUNet: spatial_shape must be 3 positive ints, got {shape}")
        # One host sync per forward; spconv's pair generation synchronises anyway.
        low = coords.amin(0).tolist()
        high = coords.amax(0).tolist()
        limits = [batch_size, *shape]
        if min(low) < 0 or any(h >= lim for h, lim in zip(high, limits)):
            raise ValueError(f"SparseUNet: voxel_coords span [{low}, {high}] but must lie in [0, {limits}) "
                             "(batch_size, spatial_shape)")
