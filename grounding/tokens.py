"""The token abstraction shared by image patches and point-cloud superpoints (spec token-compression §4.2).

A :class:`TokenSet` is a padded batch of tokens plus the bookkeeping that compressors need to undo
themselves: how many original units each token stands for (``size``) and, for every original unit,
which token represents it now (``src_index``). Image tokens start as one token per patch of the
base grid; superpoint tokens start as one token per superpoint. This module imports no model code.

Sizes and unit masses: ``size`` counts what a token represents in the units the caller cares about
(patches for images, points for superpoints), so each original unit has a mass ``unit_size`` (1 for a
patch, its point count for a superpoint, 0 for a padding unit). The bookkeeping invariant is then
``Σ size over valid tokens + Σ unit_size over units dropped without merge == Σ unit_size`` per sample,
which for an image grid (all masses 1, no padding) is exactly ``Σ size + #dropped == N0``.
Tokens that stand for no original unit (DIT text slots, register or CLS tokens) have size 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

__all__ = ["TokenSet", "batched_gather", "pack_padded", "unpack_packed"]


def batched_gather(t: Tensor, index: Tensor) -> Tensor:
    """Rows of ``t`` (B, N, *) at ``index`` (B, M) int64 in [0, N) -> (B, M, *)."""
    idx = index.reshape(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
    return t.gather(1, idx)


def pack_padded(x: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Padded (B, N, C) + valid (B, N) -> packed (ΣN_valid, C) and ``cu_seqlens`` (B + 1,) int32.

    Valid tokens keep their order inside each sample; they need not be a prefix of the row.
    """
    counts = valid.sum(dim=1)
    cu = torch.zeros(valid.shape[0] + 1, dtype=torch.int32, device=valid.device)
    cu[1:] = counts.cumsum(0)
    return x[valid], cu


def unpack_packed(packed: Tensor, valid: Tensor, fill: float = 0.0) -> Tensor:
    """Inverse of :func:`pack_padded`: packed (ΣN_valid, C) -> padded (B, N, C), ``fill`` in padding."""
    out = packed.new_full((*valid.shape, *packed.shape[1:]), fill)
    out[valid] = packed
    return out


@dataclass
class TokenSet:
    """A padded batch of tokens with the maps back to the original units.

    Fields (B = batch, N = current token slots, N0 = original units, C = channels):
        x: (B, N, C) float, token features.
        valid: (B, N) bool, False for padding slots and for tokens dropped in mask mode.
        pos: (B, N, 2) int64 (row, col) on the base patch grid for images, or (B, N, 3) float centroids
            in metres (scene frame, z-up) for superpoints. Merged image tokens keep the coordinates of
            their destination token.
        size: (B, N) float, mass of original units the token represents (patches or points).
        src_index: (B, N0) int64, for every original unit the index of the token representing it now,
            -1 when the unit was dropped without merge or is padding.
        unit_size: (B, N0) float, mass of each original unit (1 per patch, point count per superpoint,
            0 for padding units); defaults to ones.
        protect: (B, N) bool, tokens no compressor may touch; defaults to all False.
        window_id: optional (B, N) int64, window of each token for windowed attention blocks.
        score: optional (B, N) float, cached importance.
        grid: base grid (H0, W0) for images (N0 == H0 * W0), None for superpoints.
    """

    x: Tensor
    valid: Tensor
    pos: Tensor
    size: Tensor
    src_index: Tensor
    unit_size: Tensor | None = None
    protect: Tensor | None = None
    window_id: Tensor | None = None
    score: Tensor | None = None
    grid: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.unit_size is None:
            self.unit_size = torch.ones(self.src_index.shape, dtype=self.size.dtype, device=self.size.device)
        if self.protect is None:
            self.protect = torch.zeros_like(self.valid)
        if self.grid is not None:
            self.grid = (int(self.grid[0]), int(self.grid[1]))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_grid(
        cls, x: Tensor, grid: tuple[int, int] | None = None, window_size: int | None = None
    ) -> TokenSet:
        """One token per patch of an (H, W) grid, row-major.

        Args:
            x: (B, H, W, C) patch features, or (B, N, C) with ``grid`` = (H, W) and N = H * W.
            grid: required for (B, N, C) input; checked against (H, W) for 4-D input.
            window_size: when given, ``window_id`` = index of the (window_size x window_size) window,
                row-major over ceil(H / ws) x ceil(W / ws) windows (SAM pads the grid the same way).
        """
        if x.dim() == 4:
            b, h, w, c = x.shape
            if grid is not None and tuple(grid) != (h, w):
                raise ValueError(f"from_grid: grid {tuple(grid)} disagrees with x of shape {tuple(x.shape)}")
            x = x.reshape(b, h * w, c)
        elif x.dim() == 3:
            if grid is None or grid[0] * grid[1] != x.shape[1]:
                raise ValueError(f"from_grid: x of shape {tuple(x.shape)} needs grid=(H, W) with H*W == N")
            b, (h, w) = x.shape[0], grid
        else:
            raise ValueError(f"from_grid: expected x (B, H, W, C) or (B, N, C), got {tuple(x.shape)}")
        dev, n = x.device, h * w
        rows = torch.arange(h, device=dev).repeat_interleave(w)
        cols = torch.arange(w, device=dev).repeat(h)
        pos = torch.stack([rows, cols], dim=-1).unsqueeze(0).expand(b, n, 2).contiguous()
        window_id = None
        if window_size is not None:
            n_wcols = -(-w // window_size)
            wid = (rows // window_size) * n_wcols + cols // window_size
            window_id = wid.unsqueeze(0).expand(b, n).contiguous()
        return cls(
            x=x,
            valid=torch.ones(b, n, dtype=torch.bool, device=dev),
            pos=pos,
            size=torch.ones(b, n, dtype=torch.float32, device=dev),  # float32 whatever x is: sums stay exact
            src_index=torch.arange(n, device=dev).unsqueeze(0).expand(b, n).contiguous(),
            window_id=window_id,
            grid=(h, w),
        )

    @classmethod
    def from_superpoints(cls, features: Tensor, centroids: Tensor, counts: Tensor, valid: Tensor) -> TokenSet:
        """One token per superpoint of a padded batch of scenes.

        Args:
            features: (B, N, C) float, e.g. scatter-mean of backbone point features per superpoint.
            centroids: (B, N, 3) float, scatter-mean of point xyz, metres, scene frame.
            counts: (B, N) number of points in each superpoint (becomes ``size`` and ``unit_size``).
            valid: (B, N) bool, False for padding superpoints (they get size 0 and src_index -1).
        """
        b, n = valid.shape
        if features.shape[:2] != (b, n) or centroids.shape != (b, n, 3) or counts.shape != (b, n):
            raise ValueError(
                "from_superpoints: expected features (B, N, C), centroids (B, N, 3), counts (B, N) with "
                f"(B, N) = {(b, n)} from valid; got {tuple(features.shape)}, {tuple(centroids.shape)}, "
                f"{tuple(counts.shape)}"
            )
        size = torch.where(valid, counts.float(), 0.0)  # float32 even for half features: counts stay exact
        arange = torch.arange(n, device=valid.device).unsqueeze(0).expand(b, n)
        return cls(
            x=features,
            valid=valid.bool(),
            pos=centroids.float(),
            size=size,
            src_index=torch.where(valid, arange, torch.full_like(arange, -1)),
            unit_size=size.clone(),
        )

    # ------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def n0(self) -> int:
        """Number of original units (padded), N0."""
        return self.src_index.shape[1]

    @property
    def num_tokens(self) -> Tensor:
        """(B,) int64, valid tokens per sample."""
        return self.valid.sum(dim=1)

    # ------------------------------------------------------------------ transforms
    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenSet:
        """Copy with every tensor moved to ``device``."""
        moved = {
            f.name: v.to(device, non_blocking=non_blocking) if isinstance(v, Tensor) else v
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return TokenSet(**moved)

    def with_x(self, x: Tensor) -> TokenSet:
        """Copy with features replaced by ``x`` (B, N, C'), e.g. a block's output; C' may differ."""
        if x.shape[:2] != self.valid.shape:
            raise ValueError(f"with_x: x {tuple(x.shape)} must start with (B, N) = {tuple(self.valid.shape)}")
        return replace(self, x=x)

    def dense(self, x: Tensor | None = None, fill: float = 0.0, as_grid: bool = False) -> Tensor:
        """Scatter token values back to the original units through ``src_index``.

        Args:
            x: (B, N, *) values aligned with the tokens; defaults to ``self.x``.
            fill: value for units dropped without merge and for padding units.
            as_grid: reshape (B, N0, *) to (B, H0, W0, *); needs ``grid``.
        Returns:
            (B, N0, *) (or (B, H0, W0, *)): a merged token's value is copied to every unit it holds.
        """
        x = self.x if x is None else x
        if x.shape[:2] != self.valid.shape:
            raise ValueError(f"dense: x {tuple(x.shape)} must start with (B, N) = {tuple(self.valid.shape)}")
        out = batched_gather(x, self.src_index.clamp(min=0))
        keep = (self.src_index >= 0).reshape(*self.src_index.shape, *([1] * (x.dim() - 2)))
        out = torch.where(keep, out, torch.full((), fill, dtype=x.dtype, device=x.device))
        if as_grid:
            if self.grid is None:
                raise ValueError("dense(as_grid=True) needs a TokenSet built on an image grid")
            out = out.reshape(out.shape[0], *self.grid, *out.shape[2:])
        return out

    def to_packed(self) -> tuple[Tensor, Tensor]:
        """Valid token features packed for varlen attention: (ΣN_valid, C) and cu_seqlens (B + 1,) int32."""
        return pack_padded(self.x, self.valid)

    def from_packed(self, packed: Tensor, cu_seqlens: Tensor) -> TokenSet:
        """Copy with features taken from packed (ΣN_valid, C') rows (inverse of :meth:`to_packed`)."""
        expected = self.valid.sum(dim=1).cumsum(0).to(cu_seqlens.dtype)
        if cu_seqlens.shape[0] != self.batch_size + 1 or not torch.equal(cu_seqlens[1:], expected):
            raise ValueError("from_packed: cu_seqlens does not match this TokenSet's valid counts")
        return self.with_x(unpack_packed(packed, self.valid))

    # ------------------------------------------------------------------ validation
    def check(self, atol: float = 1e-3) -> TokenSet:
        """Validate shapes and bookkeeping invariants; raise ValueError naming the field, else return self.

        Checks: field shapes and dtypes agree; ``src_index`` in [-1, N) and never pointing at an invalid
        token; every valid token's ``size`` equals the summed ``unit_size`` of the units mapped to it;
        hence per sample Σ size(valid) + dropped mass == total mass (== N0 for an unpadded grid).
        """
        b, n = self.valid.shape
        if self.x.dim() != 3 or self.x.shape[:2] != (b, n):
            raise ValueError(
                f"TokenSet.x: expected (B, N, C) with (B, N) = {(b, n)}, got {tuple(self.x.shape)}"
            )
        if self.valid.dtype != torch.bool or self.protect.dtype != torch.bool or self.protect.shape != (b, n):
            raise ValueError("TokenSet.valid / protect: expected (B, N) bool tensors")
        grid_pos = self.pos.shape == (b, n, 2) and not self.pos.is_floating_point()
        cloud_pos = self.pos.shape == (b, n, 3) and self.pos.is_floating_point()
        if not (grid_pos or cloud_pos):
            raise ValueError(
                f"TokenSet.pos: expected (B, N, 2) int64 or (B, N, 3) float, got {tuple(self.pos.shape)} "
                f"{self.pos.dtype}"
            )
        for name in ("size", "window_id", "score"):
            t = getattr(self, name)
            if t is not None and t.shape != (b, n):
                raise ValueError(f"TokenSet.{name}: expected (B, N) = {(b, n)}, got {tuple(t.shape)}")
        n0 = self.n0
        if self.src_index.dim() != 2 or self.src_index.shape[0] != b or self.src_index.dtype != torch.int64:
            raise ValueError(f"TokenSet.src_index: expected (B, N0) int64, got {tuple(self.src_index.shape)}")
        if self.unit_size.shape != (b, n0):
            raise ValueError(
                f"TokenSet.unit_size: expected (B, N0) = {(b, n0)}, got {tuple(self.unit_size.shape)}"
            )
        if self.grid is not None and self.grid[0] * self.grid[1] != n0:
            raise ValueError(f"TokenSet.grid {self.grid} does not multiply to N0 = {n0}")
        src = self.src_index
        if bool(((src < -1) | (src >= n)).any()):
            raise ValueError(
                f"TokenSet.src_index: entries must be -1 or in [0, {n}), got [{src.min()}, {src.max()}]"
            )
        mapped = src >= 0
        if bool((mapped & ~self.valid.gather(1, src.clamp(min=0))).any()):
            raise ValueError("TokenSet.src_index: some units point at invalid (padding or dropped) tokens")
        mass = torch.zeros_like(self.size).scatter_add_(
            1, src.clamp(min=0), torch.where(mapped, self.unit_size, 0).to(self.size.dtype)
        )
        bad = self.valid & ~torch.isclose(mass, self.size, rtol=1e-5, atol=atol)
        if bool(bad.any()):
            s, t = (int(v) for v in bad.nonzero()[0])
            raise ValueError(
                f"TokenSet.size: sample {s} token {t} has size {float(self.size[s, t])} but its units sum to "
                f"{float(mass[s, t])}"
            )
        total = self.unit_size.sum(dim=1)
        kept = torch.where(self.valid, self.size, 0).sum(dim=1)
        dropped = torch.where(mapped, 0, self.unit_size).sum(dim=1)
        if not torch.allclose(kept + dropped, total, rtol=1e-5, atol=atol):
            raise ValueError(
                f"TokenSet: Σ size + dropped mass {(kept + dropped).tolist()} != total {total.tolist()}"
            )
        return self
