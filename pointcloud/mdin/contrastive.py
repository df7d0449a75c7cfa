"""MDIN's semantic-consistency contrastive loss (rgsan-mdin spec §6.7), vectorised over descriptions.

Logits ``l[d, q, t] = <proj_q, proj_t> / temperature`` between the unit query projections of the supervised
prediction and the unit projections of the final words. Positive word sets per query:

- every **paired** query (whatever its target) -> the description's **main** words (weight 1), plus modifier (0.2),
  pronoun (0.2) and relation (0.1) words, each term a mean logit over its set (0 when the set is empty);
- every **unpaired** query -> the "no object" words;
- **other**-entity words are extra negatives: their logits count twice in the query's log-sum-exp.

Query -> text, per valid query with at least one positive word: ``lse_t(l') - positive term``, weight 1 (paired)
or 0.1 (unpaired). Text -> query, per word with at least one positive query (the four sets pooled for paired
queries): ``lse_q(l) - mean of its positive queries' logits``, weight main 1.0, modifier 0.2, pronoun 0.2,
relation 0.1 (later sets override earlier ones), "mentioned" 0.1, "not" 1.0 (it stands in for RoBERTa's ``</s>``,
which word-level features do not have), everything else 0.1. The original's constant ``-log(n)/n`` of the text
side is left out: it moves the value, not the gradient.

Result: ``(query->text sum + text->query sum) / 2`` (the criterion divides by the number of pairs).
"""

from __future__ import annotations

import torch
from torch import Tensor

SET_WEIGHTS = (("main", 1.0), ("modifier", 0.2), ("pronoun", 0.2), ("relation", 0.1))
UNPAIRED_QUERY_WEIGHT = 0.1
OTHER_TOKEN_WEIGHT = 0.1


def _masked_mean(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    return (values * mask).sum(dim) / mask.sum(dim).clamp_min(1)


def semantic_consistency_loss(query_proj: Tensor, token_proj: Tensor, query_valid: Tensor, word_valid: Tensor,
                              paired: Tensor, word_sets: dict[str, Tensor], temperature: float = 0.07) -> Tensor:
    """Sum over descriptions of the symmetric contrastive loss (module docstring).

    Args:
        query_proj: (D, Q, P) unit vectors; token_proj: (D, T, P) unit vectors.
        query_valid: (D, Q) bool; word_valid: (D, T) bool.
        paired: (D, Q) bool, queries with at least one (query, target) pair.
        word_sets: (D, T) bool sets ``main``, ``modifier``, ``pronoun``, ``relation``, ``other``, ``no_object``
            (the last has "not" then "mentioned").

    Returns:
        scalar tensor.
    """
    logits = torch.einsum("dqp,dtp->dqt", query_proj.float(), token_proj.float()) / temperature
    vq, vt = query_valid, word_valid
    sets = {k: v & vt for k, v in word_sets.items()}
    neg_inf = torch.finfo(logits.dtype).min
    # Query -> text.
    boosted = torch.where(sets["other"][:, None, :], 2 * logits, logits).masked_fill(~vt[:, None, :], neg_inf)
    lse_t = torch.logsumexp(boosted, -1)  # (D, Q)
    pos_paired = sum(w * _masked_mean(logits, sets[name][:, None, :].float(), -1) for name, w in SET_WEIGHTS)
    pos_unpaired = _masked_mean(logits, sets["no_object"][:, None, :].float(), -1)
    any_paired_pos = torch.stack([sets[name].any(-1) for name, _ in SET_WEIGHTS]).any(0)  # (D,)
    has_pos = torch.where(paired, any_paired_pos[:, None], sets["no_object"].any(-1)[:, None]) & vq
    weight_q = torch.where(paired, 1.0, UNPAIRED_QUERY_WEIGHT)
    q2t = ((lse_t - torch.where(paired, pos_paired, pos_unpaired)) * weight_q * has_pos).sum()
    # Text -> query.
    paired_words = torch.stack([sets[name] for name, _ in SET_WEIGHTS]).any(0)  # (D, T)
    pos = ((paired & vq)[:, :, None] & paired_words[:, None, :]) | ((~paired & vq)[:, :, None]
                                                                      & sets["no_object"][:, None, :])
    lse_q = torch.logsumexp(logits.masked_fill(~vq[:, :, None], neg_inf), 1)  # (D, T)
    pos_mean = _masked_mean(logits, pos.float(), 1)
    weight_t = torch.full_like(lse_q, OTHER_TOKEN_WEIGHT)
    for name, w in SET_WEIGHTS:
        weight_t = torch.where(sets[name], w, weight_t)
    no_obj = sets["no_object"]
    first_no_obj = no_obj & (no_obj.long().cumsum(-1) == 1)  # "not": the </s> role, weight 1.0
    weight_t = torch.where(no_obj, 0.1, weight_t)
    weight_t = torch.where(first_no_obj, 1.0, weight_t)
    t2q = ((lse_q - pos_mean) * weight_t * (pos.any(1) & vt)).sum()
    return (q2t + t2q) / 2
