"""A tiny test-only referring-segmentation task that follows the real task contract.

Each sample is a small "scene" of P points with D-dim features plus a query vector; the referred
points are those whose feature has a positive dot product with the query. The batch concatenates
points with offsets (no padding), as the 3D tasks do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

# Imported by the engine tests from here rather than from ``conftest``: several test folders have a conftest, and
# ``from conftest import ...`` reads whichever was loaded last when pytest is given more than one folder.
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOY_CONFIGS = HERE / "configs"


class ToyDataset(Dataset):
    """``size`` samples of ``points`` points in ``dim`` dims, generated from ``seed``.

    ``unreadable``: indices whose item comes back as None and is left out by :meth:`collate`, the "skip broken
    samples" pattern of many loaders, which loses samples silently (the engine's coverage check must see it).
    """

    def __init__(self, size: int = 24, points: int = 40, dim: int = 8, seed: int = 0,
                 unreadable: tuple[int, ...] = ()) -> None:
        self.unreadable = set(unreadable)
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for i in range(size):
            n = points + i % 5  # uneven scenes, so offsets matter
            feats = torch.randn(n, dim, generator=g)
            query = torch.randn(dim, generator=g)
            self.items.append({"sample_id": f"s{seed}_{i:04d}", "points": feats, "query": query,
                               "gt": feats @ query > 0, "group": "unique" if i % 3 == 0 else "multiple"})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        return None if i in self.unreadable else self.items[i]

    def eval_sample_ids(self) -> list[str]:
        return [it["sample_id"] for it in self.items]

    @staticmethod
    def collate(items: list[dict[str, Any] | None]) -> ToyBatch:
        return ToyBatch.collate([it for it in items if it is not None])


@dataclass
class ToyBatch:
    points: Tensor   # (ΣP, D)
    offsets: Tensor  # (B + 1,) int64
    queries: Tensor  # (B, D)
    gt: Tensor       # (ΣP,) bool
    groups: list[str]
    sample_ids: list[str]

    @classmethod
    def collate(cls, items: list[dict[str, Any]]) -> ToyBatch:
        sizes = torch.tensor([len(it["points"]) for it in items])
        return cls(points=torch.cat([it["points"] for it in items]),
                   offsets=torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)]),
                   queries=torch.stack([it["query"] for it in items]),
                   gt=torch.cat([it["gt"] for it in items]),
                   groups=[it["group"] for it in items], sample_ids=[it["sample_id"] for it in items])

    def to(self, device: torch.device | str) -> ToyBatch:
        return ToyBatch(self.points.to(device), self.offsets.to(device), self.queries.to(device),
                        self.gt.to(device), self.groups, self.sample_ids)

    def __len__(self) -> int:
        return len(self.sample_ids)

    def batch_index(self) -> Tensor:
        return torch.repeat_interleave(torch.arange(len(self), device=self.points.device),
                                       self.offsets.diff())

    def eval_gt_masks(self) -> list[Tensor]:
        return [self.gt[a:b] for a, b in zip(self.offsets[:-1].tolist(), self.offsets[1:].tolist())]

    def eval_groups(self) -> list[str]:
        return self.groups


@dataclass
class ToyOutputs:
    logits: Tensor  # (ΣP,)


class ToyModel(nn.Module):
    def __init__(self, dim: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, batch: ToyBatch) -> ToyOutputs:
        q = batch.queries[batch.batch_index()]
        return ToyOutputs(self.mlp(torch.cat([batch.points, q * batch.points], -1)).squeeze(-1))


class ToyCriterion(nn.Module):
    def forward(self, out: ToyOutputs, batch: ToyBatch) -> dict[str, Tensor]:
        prob = out.logits.sigmoid()
        gt = batch.gt.float()
        dice = 1 - (2 * (prob * gt).sum() + 1) / (prob.sum() + gt.sum() + 1)
        return {"loss_bce": F.binary_cross_entropy_with_logits(out.logits, gt), "loss_dice": dice}


@dataclass
class ToyPrediction:
    sample_id: str
    pred_mask: Tensor  # (P,) bool

    def to_record(self) -> dict[str, Any]:
        return {"sample_id": self.sample_id, "points": self.pred_mask.nonzero().flatten().tolist()}


class ToyPostprocess:
    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    def __call__(self, out: ToyOutputs, batch: ToyBatch) -> list[ToyPrediction]:
        mask = out.logits.sigmoid() > self.threshold
        return [ToyPrediction(sid, mask[a:b].cpu()) for sid, a, b in
                zip(batch.sample_ids, batch.offsets[:-1].tolist(), batch.offsets[1:].tolist())]
