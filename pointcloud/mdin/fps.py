"""Farthest point sampling of seed superpoints (rgsan-mdin spec §6.2 step 2), in plain PyTorch.

MDIN samples 256 seeds per scene on the superpoint centres (metres) with pointnet2's CUDA FPS. Here the loop is
a few hundred vectorised distance updates over one scene's S superpoints, so it runs on any device without a
compiled extension (spec D23). Determinism: the first seed is index ``start`` (0, as pointnet2 is believed to do,
spec §12.5, unconfirmed) and ties of the running distance go to the lowest index (``argmax`` returns the first).
Scenes with fewer superpoints than seeds keep all of them (spec D18: the original fails there).
"""

from __future__ import annotations

import torch
from torch import Tensor


def farthest_point_sampling(points: Tensor, k: int, start: int = 0) -> Tensor:
    """Indices of ``min(k, N)`` farthest-point seeds of one point set.

    Args:
        points: (N, 3) float coordinates (metres).
        k: seeds wanted (>= 1).
        start: index of the first seed.

    Returns:
        (min(k, N),) int64 indices into ``points`` in selection order (the first is ``start``).
    """
    n = points.shape[0]
    if k < 1:
        raise ValueError(f"farthest_point_sampling: k must be >= 1, got {k}")
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=points.device)
    if not 0 <= start < n:
        raise ValueError(f"farthest_point_sampling: start {start} outside [0, {n})")
    k = min(k, n)
    pts = points.detach().float()
    out = torch.empty(k, dtype=torch.long, device=points.device)
    dist = torch.full((n,), float("inf"), device=points.device)
    cur = torch.tensor(start, device=points.device)
    for i in range(k):
        out[i] = cur
        dist = torch.minimum(dist, ((pts - pts[cur]) ** 2).sum(-1))
        cur = dist.argmax()
    return out


def batched_fps(centres: Tensor, offsets: Tensor, k: int, start: int = 0) -> tuple[Tensor, Tensor]:
    """FPS per scene of a batch whose superpoints are concatenated scene after scene.

    Args:
        centres: (S_total, 3) superpoint centres, metres.
        offsets: (B + 1,) int64 superpoint offsets of the scenes.
        k: seeds per scene.

    Returns:
        ``(seeds, valid)``: (B, K) int64 scene-local superpoint indices (0 in padding) and (B, K) bool, with
        K = the largest ``min(k, S_b)`` of the batch.
    """
    per_scene = [farthest_point_sampling(centres[int(offsets[b]):int(offsets[b + 1])], k, start)
                 for b in range(offsets.numel() - 1)]
    width = max((s.numel() for s in per_scene), default=0)
    seeds = torch.zeros(len(per_scene), width, dtype=torch.long, device=centres.device)
    valid = torch.zeros(len(per_scene), width, dtype=torch.bool, device=centres.device)
    for b, s in enumerate(per_scene):
        seeds[b, :s.numel()] = s
        valid[b, :s.numel()] = True
    return seeds, valid
