"""Losses of the retrieval head (box-retrieval spec §4.6); unweighted ``loss_*`` terms, weights in config.

- ``loss_rec`` (REC, expression queries with a correct candidate): cross-entropy of the softmax over the valid
  candidates against the target index (``rec_loss="ce"``), or the "any positive" variant
  ``-log sum_{i: IoU >= 0.5} p_i`` (``rec_loss="any_positive"``, aligned with Acc@0.5). With a "no target" logit,
  expressions without a correct candidate take it as their target; without one they are skipped.
  ``rec_categories=True`` adds the category queries that have positives, always with "any positive" (several
  objects may carry the name): a softmax signal on the names that trains the shape words faster.
- ``loss_box`` (every query, expressions and category names): per-box sigmoid focal loss (gamma 2, alpha 0.25)
  on the same logits with the query's positives as targets, summed over the valid candidates and divided by the
  number of positives (at least 1). It gives the logits an absolute level, so sigmoid(logit) is a usable
  per-box probability for multi-box answers and COCO AP (spec §4.6: softmax-only training leaves it undefined).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.batch_boxes import RetrievalBatch
from grounding.retrieval.model import RetrievalOutputs

__all__ = ["RetrievalCriterion"]

REC_LOSSES = ("ce", "any_positive")


class RetrievalCriterion(nn.Module):
    """``criterion(outputs, batch) -> {"loss_rec", "loss_box"}`` (``loss_box`` only when ``box_loss``).

    Args:
        rec_loss: ``"ce"`` (single target) or ``"any_positive"``.
        box_loss: True adds the per-box sigmoid focal term.
        focal_alpha: weight of positives (negatives get 1 - alpha); a negative value disables the weighting.
        focal_gamma: focusing exponent.
        rec_categories: also apply the softmax term ("any positive") to category queries with positives.
    """

    def __init__(self, rec_loss: str = "ce", box_loss: bool = True, focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, rec_categories: bool = False) -> None:
        super().__init__()
        if rec_loss not in REC_LOSSES:
            raise ValueError(f"RetrievalCriterion.rec_loss must be one of {REC_LOSSES}, got {rec_loss!r}")
        self.rec_loss, self.box_loss = rec_loss, box_loss
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.rec_categories = rec_categories

    def _rec(self, outputs: RetrievalOutputs, batch: RetrievalBatch) -> Tensor:
        logits = outputs.logits.float()
        expr = batch.is_expression.to(logits.device)
        targets = batch.targets.to(logits.device)
        positives = batch.positives.to(logits.device) & outputs.valid
        if outputs.no_target_logits is not None:
            # "no target" is the answer of every query without a correct candidate (an absent category too)
            none = ~positives.any(1)
            logits = torch.cat([logits, outputs.no_target_logits.float()[:, None]], 1)
            targets = torch.where(none, torch.full_like(targets, logits.shape[1] - 1), targets)
            positives = torch.cat([positives, none[:, None]], 1)
        has_answer = positives.any(1)
        single = expr & has_answer & (self.rec_loss == "ce")
        # "any positive" rows: the expressions in that variant, and the category queries with positives
        summed = (expr & has_answer & (self.rec_loss == "any_positive")) | (~expr & has_answer & self.rec_categories)
        terms = []
        if bool(single.any()):
            terms.append(F.cross_entropy(logits[single], targets[single], reduction="none"))
        if bool(summed.any()):
            log_p = logits[summed].log_softmax(1)
            terms.append(-log_p.masked_fill(~positives[summed], float("-inf")).logsumexp(1))
        if not terms:  # nothing to score: a zero that still reaches every logit (DDP needs the graph)
            return 0.0 * outputs.logits.masked_fill(~outputs.valid, 0).sum()
        return torch.cat(terms).mean()

    def _box(self, outputs: RetrievalOutputs, batch: RetrievalBatch) -> Tensor:
        valid = outputs.valid
        logits = outputs.logits.float()[valid]
        target = batch.positives.to(valid.device)[valid].float()
        ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        p = logits.sigmoid()
        p_t = p * target + (1 - p) * (1 - target)
        loss = ce * (1 - p_t).pow(self.focal_gamma)
        if self.focal_alpha >= 0:
            loss = loss * (self.focal_alpha * target + (1 - self.focal_alpha) * (1 - target))
        return loss.sum() / target.sum().clamp_min(1.0)

    def forward(self, outputs: RetrievalOutputs, batch: RetrievalBatch) -> dict[str, Tensor]:
        terms = {"loss_rec": self._rec(outputs, batch)}
        if self.box_loss:
            terms["loss_box"] = self._box(outputs, batch)
        return terms
