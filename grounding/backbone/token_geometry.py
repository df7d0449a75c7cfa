"""Per-forward cache of what a compressed block computes from the token *layout* alone.

Between two compression events the tokens' validity, windows, grid cells and grid do not change; only their
features do. Packing tokens per window (:func:`~grounding.compress.group_layout`), the relative-position
indices, the pad-cell keys and the scatter index back to token order are therefore computed once per event
and reused by every following block. Why: on CUDA the compressed SAM ViT-B encoder at 1024 px was bound by the
host, not the GPU — 1745 kernel launches and 108 host synchronisations per forward against 324 and 24 dense
(``torch.profiler`` and ``torch.cuda.set_sync_debug_mode``; docs/benchmarks.md), most of them recomputing
this layout in every block.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from torch import Tensor

from grounding.tokens import TokenSet

__all__ = ["GeometryCache", "rel_pos_index"]


class GeometryCache:
    """Values keyed by name, valid while the TokenSet's layout tensors are the same objects.

    The key is the identity of ``valid``, ``window_id``, ``pos`` and ``size`` (held here, so an identity cannot be
    reused by a new tensor while cached) and the ``grid`` tuple; any other TokenSet clears the cache.
    """

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._items: dict[Hashable, Any] = {}

    def get(self, tokens: TokenSet, name: Hashable, make: Callable[[], Any]) -> Any:
        """``make()`` once per layout; later calls with a TokenSet of the same layout return the stored value."""
        key = (tokens.valid, tokens.window_id, tokens.pos, tokens.size, tokens.grid)
        old = self._key
        if old is None or any(a is not b for a, b in zip(old[:4], key[:4])) or old[4] != key[4]:
            self._key, self._items = key, {}
        if name not in self._items:
            self._items[name] = make()
        return self._items[name]


def rel_pos_index(pos_q: Tensor, pos_k: Tensor, half_h: int, half_w: int) -> tuple[Tensor, Tensor]:
    """Row and column indices into rel-pos tables of sizes 2·half + 1: (B', Nq, Nk) int64 each.

    ``pos_q`` (B', Nq, 2) and ``pos_k`` (B', Nk, 2) are (row, col) grid cells; index = offset + half, clamped
    (offsets outside the table do not occur for tokens of one grid or one window).
    """
    dr = (pos_q[:, :, None, 0] - pos_k[:, None, :, 0] + half_h).clamp(0, 2 * half_h)
    dc = (pos_q[:, :, None, 1] - pos_k[:, None, :, 1] + half_w).clamp(0, 2 * half_w)
    return dr, dc

