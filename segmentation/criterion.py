"""DIT's mask losses on the canvas (refcoco-dit spec §2.7).

All terms compare the (B, S, S) canvas logits with ``batch.gt_masks`` (soft targets in [0, 1], 0 in the
padding: pad pixels are background, as in DIT) and are computed in float32 whatever the autocast dtype.

- ``"bce"`` (default, DIT parity): ``{"loss_mask"}`` = BCE-with-logits, mean over every canvas pixel.
- ``"bce_dice"``: ``{"loss_bce", "loss_dice"}``.
- ``"focal_dice"``: ``{"loss_focal", "loss_dice"}``; sigmoid focal loss (alpha, gamma) with soft targets,
  mean over pixels.
Dice = 1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1) per sample (p = sigmoid), mean over the batch.
Terms are unweighted; weights live in the config (ARCHITECTURE.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.batch2d import ReferBatch2D
from segmentation.dit import DITOutputs

__all__ = ["DITCriterion", "dice_loss", "sigmoid_focal_loss"]

LOSSES = ("bce", "bce_dice", "focal_dice")


def dice_loss(logits: Tensor, targets: Tensor, smooth: float = 1.0) -> Tensor:
    """Soft Dice loss; logits and targets (B, ...) -> scalar mean over B."""
    p = logits.sigmoid().flatten(1)
    g = targets.flatten(1)
    return (1.0 - (2.0 * (p * g).sum(1) + smooth) / (p.sum(1) + g.sum(1) + smooth)).mean()


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Focal loss of RetinaNet with soft targets; mean over all elements. ``alpha < 0`` disables weighting."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1.0 - p) * (1.0 - targets)
    loss = ce * (1.0 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss.mean()


class DITCriterion(nn.Module):
    """``criterion(outputs, batch) -> dict[str, Tensor]`` of unweighted ``loss_*`` terms.

    Args:
        loss: ``"bce"`` | ``"bce_dice"`` | ``"focal_dice"`` (see the module docstring).
        focal_alpha, focal_gamma: of the focal term.
    """

    def __init__(self, loss: str = "bce", focal_alpha: float = 0.25, focal_gamma: float = 2.0) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"DITCriterion.loss must be one of {LOSSES}, got {loss!r}")
        self.loss, self.focal_alpha, self.focal_gamma = loss, focal_alpha, focal_gamma

    def forward(self, outputs: DITOutputs, batch: ReferBatch2D) -> dict[str, Tensor]:
        logits = outputs.pred_logits.float()
        target = batch.gt_masks.to(logits.device, torch.float32)
        if logits.shape != target.shape:
            raise ValueError(f"DITCriterion: logits {tuple(logits.shape)} and batch.gt_masks "
                             f"{tuple(target.shape)} must both be (B, S, S) canvas maps")
        if self.loss == "bce":
            return {"loss_mask": F.binary_cross_entropy_with_logits(logits, target)}
        dice = dice_loss(logits, target)
        if self.loss == "bce_dice":
            return {"loss_bce": F.binary_cross_entropy_with_logits(logits, target), "loss_dice": dice}
        return {"loss_focal": sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma),
                "loss_dice": dice}
