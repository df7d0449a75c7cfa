"""DIT's mask losses on the canvas (refcoco-dit spec §2.7).

All terms compare the (B, S, S) canvas logits with ``batch.gt_masks`` (soft targets in [0, 1], 0 in the
padding: pad pixels are background, as in DIT) and are computed in float32 whatever the autocast dtype.

- ``"bce"`` (default, DIT parity): ``{"loss_mask"}`` = BCE-with-logits, mean over every canvas pixel.
- ``"bce_dice"``: ``{"loss_bce", "loss_dice"}``.
- ``"focal_dice"``: ``{"loss_focal", "loss_dice"}``; sigmoid focal loss (alpha, gamma) with soft targets,
  mean over pixels.
Dice = 1 - (2 sum(p g) + 1) / (sum(p) + sum(g) + 1) per sample (p = sigmoid), mean over the batch.

Not DIT's: with a model built with ``attribute_classes`` and a batch carrying ``attr_maps``, ``"loss_attr"`` is
the pixel cross-entropy of each attribute kind's logits, upsampled bilinearly from the encoder's grid to the
canvas, against the per-pixel labels (canvas padding ignored), averaged over the kinds. With
``attribute_prior`` also ``"loss_attr_text"``: the cross-entropy of the sentence's attribute logits against the
referred object's own label of each kind (the most frequent non-background label under ``gt_masks > 0.5``; rows
whose target covers no labelled pixel are left out), averaged over the kinds. Batches without maps (evaluation)
have neither term.
Terms are unweighted; weights live in the config (ARCHITECTURE.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.batch2d import ReferBatch2D
from segmentation.dit import DITOutputs

__all__ = ["DITCriterion", "attribute_loss", "dice_loss", "referent_attribute_loss", "referent_labels",
           "sigmoid_focal_loss"]

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
            losses = {"loss_mask": F.binary_cross_entropy_with_logits(logits, target)}
        elif self.loss == "bce_dice":
            losses = {"loss_bce": F.binary_cross_entropy_with_logits(logits, target),
                      "loss_dice": dice_loss(logits, target)}
        else:
            losses = {"loss_focal": sigmoid_focal_loss(logits, target, self.focal_alpha, self.focal_gamma),
                      "loss_dice": dice_loss(logits, target)}
        if outputs.attr_logits and batch.attr_maps is not None:
            maps = batch.attr_maps.to(logits.device)
            losses["loss_attr"] = attribute_loss(outputs.attr_logits, maps)
            if outputs.attr_text_logits:
                losses["loss_attr_text"] = referent_attribute_loss(outputs.attr_text_logits,
                                                                   referent_labels(maps, target > 0.5))
        return losses


def referent_labels(attr_maps: Tensor, target: Tensor) -> Tensor:
    """(B, K) int64: per row and kind, the most frequent label > 0 of ``attr_maps`` (B, K, S, S) under ``target``
    (B, S, S) bool; -1 where the target covers no labelled pixel."""
    B, K = attr_maps.shape[:2]
    n = int(attr_maps.max().clamp(min=0)) + 1
    # one histogram per (row, kind) over the target's pixels only: bin (b * K + k) * n + label
    rows = torch.arange(B * K, device=attr_maps.device).view(B, K, 1, 1) * n
    bins = (rows + attr_maps.clamp(min=0))[target[:, None].expand(-1, K, -1, -1)]
    counts = torch.bincount(bins, minlength=B * K * n).view(B, K, n)
    counts[..., 0] = 0  # background (and padding) never names the referent
    best = counts.argmax(-1)
    return torch.where(counts.amax(-1) > 0, best, torch.full_like(best, -1))


def referent_attribute_loss(text_logits: tuple[Tensor, ...], labels: Tensor) -> Tensor:
    """Mean over kinds of the cross-entropy of (B, n_k) logits against ``labels`` (B, K) (-1 ignored; a kind
    with no labelled row adds 0)."""
    terms = []
    for k, lg in enumerate(text_logits):
        y = labels[:, k]
        terms.append(F.cross_entropy(lg.float(), y, ignore_index=-1) if bool((y >= 0).any()) else lg.sum() * 0)
    return torch.stack(terms).mean()


def attribute_loss(attr_logits: tuple[Tensor, ...], attr_maps: Tensor) -> Tensor:
    """Mean over kinds of the pixel cross-entropy; logits k (B, n_k, h, w) on the grid, maps (B, K, S, S) int64
    (-1 ignored)."""
    if len(attr_logits) != attr_maps.shape[1]:
        raise ValueError(f"attribute loss: the model has {len(attr_logits)} attribute heads but batch.attr_maps "
                         f"has {attr_maps.shape[1]} channels (model.net.attribute_classes and the data's "
                         "object_maps must list the same kinds)")
    size = attr_maps.shape[-2:]
    terms = []
    for k, lg in enumerate(attr_logits):
        labels = attr_maps[:, k]
        if int(labels.max()) >= lg.shape[1]:
            raise ValueError(f"attribute loss: kind {k} has label {int(labels.max())} but the head has "
                             f"{lg.shape[1]} classes (model.net.attribute_classes)")
        up = F.interpolate(lg.float(), size=size, mode="bilinear", align_corners=False)
        terms.append(F.cross_entropy(up, labels, ignore_index=-1))
    return torch.stack(terms).mean()
