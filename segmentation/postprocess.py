"""DIT inference: canvas logits -> one binary mask per expression at the original resolution (spec §5.3).

For sample b: the (S, S) canvas logits are cropped to the resized image (``pad_tl``, ``resized_hw``), the
crop is resized bilinearly (``align_corners=False``) to ``original_hw`` **as logits**, then
``sigmoid(logit) > threshold``. Resizing logits rather than a binary map avoids DIT's slight dilation
(spec §5.2: its bilinear resize of the binary map followed by ``> 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.batch2d import ReferBatch2D
from datasets.coco_masks import encode_mask
from segmentation.dit import DITOutputs

__all__ = ["DITPostprocess", "RISPrediction"]


@dataclass
class RISPrediction:
    """One expression's prediction.

    Attributes:
        sample_id: ``"<dataset>/<sent_id>"``.
        mask: (H, W) bool at the original image resolution (pixels of the original JPEG, origin top-left).
        score: mean foreground probability inside the mask (0 for an empty mask).
        image_id: COCO image id.
        text: the expression.
    """

    sample_id: str
    mask: Tensor
    score: float
    image_id: int
    text: str

    @property
    def pred_mask(self) -> Tensor:
        """(H * W,) bool, row-major, as :meth:`ReferBatch2D.eval_gt_masks` flattens the ground truth."""
        return self.mask.reshape(-1)

    def to_record(self) -> dict[str, Any]:
        """JSON-serialisable record; the mask as COCO compressed RLE ``{"size": [H, W], "counts": str}``."""
        return {"sample_id": self.sample_id, "image_id": int(self.image_id), "text": self.text,
                "score": float(self.score), "mask_rle": encode_mask(self.mask.cpu().numpy())}


class DITPostprocess:
    """``postprocess(outputs, batch) -> list[RISPrediction]`` (batch order).

    Args:
        threshold: on the probability, strict ``>``; 0.5 by default (spec §5.3), 0.35 for DIT/CRIS parity.
    """

    def __init__(self, threshold: float = 0.5) -> None:
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"DITPostprocess.threshold must lie in (0, 1), got {threshold}")
        self.threshold = threshold

    @torch.no_grad()
    def __call__(self, outputs: DITOutputs, batch: ReferBatch2D) -> list[RISPrediction]:
        logits = outputs.pred_logits.float()
        if logits.shape[0] != len(batch):
            raise ValueError(f"DITPostprocess: {logits.shape[0]} logit maps for a batch of {len(batch)}")
        predictions = []
        for b in range(len(batch)):
            top, left = (int(v) for v in batch.pad_tl[b])
            rh, rw = (int(v) for v in batch.resized_hw[b])
            oh, ow = (int(v) for v in batch.original_hw[b])
            if rh < 1 or rw < 1 or top + rh > logits.shape[-2] or left + rw > logits.shape[-1]:
                raise ValueError(f"sample {batch.sample_ids[b]}: resized image {rh}x{rw} at {top},{left} does not "
                                 f"fit the {tuple(logits.shape[-2:])} canvas")
            crop = logits[b, top:top + rh, left:left + rw]
            full = F.interpolate(crop[None, None], size=(oh, ow), mode="bilinear", align_corners=False)[0, 0]
            prob = full.sigmoid()
            mask = prob > self.threshold
            score = float(prob[mask].mean()) if bool(mask.any()) else 0.0
            predictions.append(RISPrediction(sample_id=batch.sample_ids[b], mask=mask.cpu(), score=score,
                                             image_id=int(batch.image_ids[b]), text=batch.texts[b]))
        return predictions
