"""RG-SAN inference (rgsan-mdin spec §4.6): final prediction's superpoint mask -> point mask in original order.

The last prediction (layer 6) of the output query is binarised per superpoint (sigmoid >= 0.5) and broadcast to
the points of its scene through the superpoint ids, then scattered to the prepared scene's original point order
(:meth:`datasets.batch3d.ReferBatch3D.to_original_points`; the identity with the validation transform, which
keeps every point in order, so ``pred_mask`` lines up with the evaluator's ground truth). The score is reported
but not used, as in the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from datasets.batch3d import ReferBatch3D


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
    for start, length in rle:
        if start < 0 or length < 0 or start + length > size:
            raise ValueError(f"rle_to_mask: run [{start}, {length}] does not fit a mask of {size} points")
        out[start:start + length] = True
    return out


@dataclass
class RGSANPrediction:
    """One description's prediction.

    Attributes:
        sample_id, scene_id, description: from the record.
        target_word: the output query's word (the RTS target, or the root word without rule guidance).
        rule: the target-word rule that fired (``root_word`` without rule guidance).
        pred_mask: (N_original,) bool over the scene's points in the prepared scene's original order.
        score: predicted IoU of the final mask.
        position: the output word's predicted position, metres (batch ``xyz_middle`` frame), 3 floats.
    """

    sample_id: str
    scene_id: str
    description: str
    target_word: str
    rule: str
    pred_mask: Tensor
    score: float
    position: list[float]

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable record; the mask as run-length pairs over original points."""
        return {"sample_id": self.sample_id, "scene_id": self.scene_id, "description": self.description,
                "target_word": self.target_word, "rule": self.rule, "num_points": int(self.pred_mask.numel()),
                "num_pred_points": int(self.pred_mask.sum()), "score": self.score, "position": self.position,
                "pred_mask_rle": mask_to_rle(self.pred_mask)}


class RGSANPostprocess:
    """``postprocess(outputs, batch) -> list[RGSANPrediction]`` (one per description, batch order).

    Args:
        threshold: sigmoid threshold of the superpoint mask (0.5).
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"RGSANPostprocess.threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold

    def __call__(self, outputs: Any, batch: ReferBatch3D) -> list[RGSANPrediction]:
        sp_mask = (outputs.pred_masks[-1].detach().sigmoid() >= self.threshold) & ~outputs.sp_padding  # (D, S)
        scores = outputs.pred_scores[-1].detach().float().cpu().tolist()
        positions = outputs.pred_positions[-1].detach().float().cpu().tolist()
        desc_offsets = batch.desc_offsets.tolist()
        predictions: list[RGSANPrediction] = []
        for b in range(batch.num_scenes):
            first, last = desc_offsets[b], desc_offsets[b + 1]
            if first == last:
                continue
            local_sp = batch.superpoint[batch.point_slice(b)] - batch.sp_offsets[b]  # (P_b,) ids in 0..S_b-1
            point_masks = sp_mask[first:last][:, local_sp.to(sp_mask.device)]  # (D_b, P_b), batch point order
            for j in range(first, last):
                rec = batch.records[j]
                predictions.append(RGSANPrediction(
                    sample_id=rec.sample_id, scene_id=rec.scene_id, description=rec.description,
                    target_word=outputs.output_words[j], rule=outputs.rules[j],
                    pred_mask=batch.to_original_points(point_masks[j - first], b, fill=False).cpu(),
                    score=scores[j], position=positions[j]))
        return predictions
