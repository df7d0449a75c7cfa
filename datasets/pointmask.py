"""Point masks on disk: run-length pairs over a prepared scene's original point order.

``predictions.jsonl`` of the 3D tasks stores each predicted mask as ``[[start, length], ...]`` (the True runs in
index order) together with ``num_points``; a 250k-point scene with one object costs a handful of integers.
"""

from __future__ import annotations

import torch
from torch import Tensor


def mask_to_rle(mask: Tensor) -> list[list[int]]:
    """Run-length encoding of the True runs of a (N,) bool mask: ``[[start, length], ...]`` in index order."""
    m = mask.detach().to("cpu", torch.int8).flatten()
    edges = torch.diff(torch.cat([m.new_zeros(1), m, m.new_zeros(1)]))
    starts = (edges == 1).nonzero().flatten()
    ends = (edges == -1).nonzero().flatten()
    return [[int(s), int(e - s)] for s, e in zip(starts, ends)]


def rle_to_mask(rle: list[list[int]], size: int) -> Tensor:
    """Inverse of :func:`mask_to_rle`: a (size,) bool mask. Raises ValueError on a run outside ``[0, size)``."""
    out = torch.zeros(size, dtype=torch.bool)
    for run in rle:
        if len(run) != 2:
            raise ValueError(f"rle_to_mask: a run must be [start, length], got {run!r}")
        start, length = int(run[0]), int(run[1])
        if start < 0 or length < 0 or start + length > size:
            raise ValueError(f"rle_to_mask: run [{start}, {length}] does not fit a mask of {size} points")
        out[start:start + length] = True
    return out
