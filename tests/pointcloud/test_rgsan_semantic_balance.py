"""Class-balanced weights of RG-SAN's auxiliary superpoint classification (``semantic_balance``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pointcloud.rgsan.criterion import IGNORE, RGSANCriterion, balanced_class_weights


def test_balanced_weights_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 1, IGNORE])
    assert balanced_class_weights(labels, 3, 0.0) is None
    # counts (3, 1, 0); n^-1 = (1/3, 1, 0); scaled so 3 * w0 + 1 * w1 = 4 labelled superpoints
    w = balanced_class_weights(labels, 3, 1.0)
    assert torch.allclose(w, torch.tensor([2 / 3, 2.0, 0.0]))
    # power 0.5: (3^-0.5, 1, 0) * 4 / (3 * 3^-0.5 + 1)
    w = balanced_class_weights(labels, 3, 0.5)
    scale = 4 / (3 * 3 ** -0.5 + 1)
    assert torch.allclose(w, torch.tensor([3 ** -0.5 * scale, scale, 0.0]))


def test_weighted_loss_is_the_weighted_mean_and_favours_the_rare_class() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 3)
    labels = torch.tensor([0, 0, 0, 1, IGNORE])
    w = balanced_class_weights(labels, 3, 1.0)
    got = F.cross_entropy(logits, labels, weight=w, ignore_index=IGNORE)
    per = F.cross_entropy(logits[:4], labels[:4], reduction="none")
    assert got == pytest.approx(float((per * w[labels[:4]]).sum() / 4), rel=1e-6)
    # the rare class's superpoint carries as much weight as the three common ones together
    assert float(w[1]) == pytest.approx(3 * float(w[0]))


def test_negative_balance_is_refused() -> None:
    with pytest.raises(ValueError, match="semantic_balance"):
        RGSANCriterion(semantic_balance=-1.0)
