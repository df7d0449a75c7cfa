"""Candidate sources, the seeded shuffle (an order-only model stays at chance), the flip, and the image-level dataset
on the tiny generated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.candidates import (
    AnnotatedBoxes,
    Candidates,
    ImageBoxes,
    ProposalBoxes,
    iou_matrix,
    shuffle_candidates,
)
from datasets.refboxes import refer_box_dataset
from datasets.synthetic.images import generate_synthetic2d
from datasets.transforms.boxes2d import BoxLetterbox, box_to_canvas, flip_boxes, swap_directions


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2d_boxes")
    generate_synthetic2d(out, preset="tiny", seed=0)
    return out


def _image(n: int = 4) -> ImageBoxes:
    boxes = np.array([[10 + 40 * k, 20, 40 + 40 * k, 60] for k in range(n)], np.float64)
    return ImageBoxes(7, 100, 200, boxes, np.arange(1, n + 1), np.arange(100, 100 + n))


def test_shuffle_is_a_seeded_permutation() -> None:
    cands = Candidates(_image().boxes, np.arange(4, dtype=np.float32))
    a, perm = shuffle_candidates(cands, np.random.default_rng([0, 0, 5]))
    b, perm_b = shuffle_candidates(cands, np.random.default_rng([0, 0, 5]))
    assert sorted(perm.tolist()) == [0, 1, 2, 3] and np.array_equal(perm, perm_b)
    assert np.array_equal(a.boxes, cands.boxes[perm]) and np.array_equal(a.scores, cands.scores[perm])


def test_an_order_only_model_stays_at_chance() -> None:
    # Worst case for leakage: the annotation order always puts the answer first. After the dataset's shuffle, the
    # best rule that sees only the list length and positions (the most frequent answer position per length, fitted
    # on one half) must not beat chance on the other half.
    rng_sizes = np.random.default_rng(123)
    sizes = rng_sizes.integers(3, 7, size=4000)
    answer_pos = np.array([int(np.argmax(shuffle_candidates(Candidates(np.zeros((n, 4)), np.ones(n, np.float32)),
                                                            np.random.default_rng([0, 0, i]))[1] == 0))
                           for i, n in enumerate(sizes)])
    fit, test = slice(0, 2000), slice(2000, 4000)
    rule = {n: np.bincount(answer_pos[fit][sizes[fit] == n], minlength=n).argmax() for n in range(3, 7)}
    acc = float(np.mean([answer_pos[i] == rule[sizes[i]] for i in range(2000, 4000)]))
    chance = float(np.mean(1.0 / sizes[test]))
    assert abs(acc - chance) < 0.04          # ~4 standard errors at 2000 samples
    # without the shuffle the same fitting finds the leak: position 0 is always right
    unshuffled = {n: np.bincount(np.zeros(int((sizes[fit] == n).sum()), int), minlength=n).argmax()
                  for n in range(3, 7)}
    assert all(unshuffled[n] == 0 for n in unshuffled) and chance < 0.3


def test_annotated_boxes_and_negatives() -> None:
    image = _image()
    rng = np.random.default_rng(0)
    plain = AnnotatedBoxes()(image, image.boxes[:1], rng, train=True)
    assert np.array_equal(plain.boxes, image.boxes) and (plain.scores == 1).all()
    src = AnnotatedBoxes(jitter_negatives=3, random_negatives=3)
    train = src(image, image.boxes[:1], rng, train=True)
    neg = train.boxes[4:]
    assert 4 < len(train) <= 10 and np.array_equal(train.boxes[:4], image.boxes)
    assert (iou_matrix(neg, image.boxes).max(1) < 0.5).all()      # never a correct answer
    assert np.array_equal(neg, np.round(neg))                     # quantised like the whole-pixel annotations
    assert (neg[:, [0, 1]] >= 0).all() and (neg[:, 2] <= 200).all() and (neg[:, 3] <= 100).all()
    assert len(src(image, image.boxes[:1], rng, train=False)) == 4  # evaluation: annotated boxes only


def test_proposal_boxes(tmp_path: Path) -> None:
    image = _image(2)
    gt = image.boxes[:1]                                          # [10, 20, 40, 60]
    rows = [[11, 20, 30, 40, 0.9],   # IoU 0.95 with gt -> dropped when gt is inserted
            [12, 22, 20, 30, 0.8],   # IoU 0.5 -> the inserted gt takes the score of its best match (0.9)
            [100, 50, 10, 10, 0.5], [0, 0, 5, 5, 0.2]]
    path = tmp_path / "proposals.json"
    path.write_text(json.dumps({"proposals": {"7": rows}}))
    test = ProposalBoxes(path, min_score=0.3, max_candidates=100)(image, gt, np.random.default_rng(0), train=False)
    assert len(test) == 3 and test.scores.tolist() == pytest.approx([0.9, 0.8, 0.5])  # score >= 0.3, sorted
    assert test.boxes[0].tolist() == [11, 20, 41, 60]                                 # xywh -> xyxy
    src = ProposalBoxes(path, min_score=0.3, p_gt=1.0)
    train = src(image, gt, np.random.default_rng(0), train=True)
    assert len(train) == 3 and train.boxes[-1].tolist() == gt[0].tolist() and train.scores[-1] == pytest.approx(0.9)
    capped = ProposalBoxes(path, min_score=0.0, max_candidates=2, p_gt=1.0)(image, gt, np.random.default_rng(0), True)
    assert len(capped) == 2 and capped.boxes[-1].tolist() == gt[0].tolist()
    with pytest.raises(ValueError, match="no proposals for this image"):
        ProposalBoxes(path)(ImageBoxes(8, 10, 10, np.zeros((0, 4)), np.zeros(0), np.zeros(0)), gt,
                            np.random.default_rng(0), False)


def test_flip_and_words() -> None:
    assert swap_directions("the leftmost cup left of the bright rightmost star") == \
        "the rightmost cup right of the bright leftmost star"
    assert flip_boxes(np.array([10.0, 1, 30, 2]), 100).tolist() == [70, 1, 90, 2]
    canvas = box_to_canvas(torch.tensor([[[0.0, 0, 200, 100]]]), torch.tensor([[100, 200]]),
                           torch.tensor([[32, 64]]), torch.tensor([[16, 0]]))
    assert canvas.tolist() == [[[0, 16, 64, 48]]]                 # the whole image lands on its resized area


def test_image_items_and_batch(tiny: Path) -> None:
    train = refer_box_dataset(tiny, "synthetic2d", "train", BoxLetterbox(64, train=True, flip_prob=1.0),
                              AnnotatedBoxes(1, 1), category_queries=3, seed=0)
    val = refer_box_dataset(tiny, "synthetic2d", "val", BoxLetterbox(64), AnnotatedBoxes(), category_queries="all")
    n_sent = len(val.records)
    batch = val.collate([val[i] for i in range(len(val))])
    assert len(batch) == n_sent and batch.num_images == len(val)          # every sentence once, grouped by image
    assert sorted(batch.sample_ids) == sorted(r.sample_id for r in val.records)
    assert int((~batch.is_expression).sum()) == len(val) * 11              # every category on every image
    e = batch.expression_index
    # the target candidate is the ref's own box (IoU 1) and exactly it is positive
    tgt = batch.boxes[batch.query_image[e], batch.targets[e]].double()
    assert torch.allclose(tgt, batch.eval_gt_boxes()) and (batch.positives[e].sum(1) >= 1).all()
    again = val.collate([val[i] for i in range(len(val))])
    assert torch.equal(again.boxes, batch.boxes)                           # evaluation is reproducible
    order = [val.images[i].boxes for i in batch.image_ids]
    assert any(not np.array_equal(o, batch.boxes[k][:len(o)].double().numpy()) for k, o in enumerate(order)), \
        "the candidate order must not be the annotation order"
    # training: flipped frame, words swapped, a new order every epoch, negatives never positive
    item0 = train[0]
    train.set_epoch(1)
    item1 = train[0]
    assert item0["flipped"] and not np.array_equal(item0["boxes"], item1["boxes"])
    tb = train.collate([train[i] for i in range(3)])
    assert int((~tb.is_expression).sum()) == 9 and tb.flipped.all()
    cands = tb.eval_candidate_boxes()
    gts = tb.eval_gt_boxes()
    for c, g in zip(cands, gts):
        assert iou_matrix(c.numpy(), g[None].numpy()).max() == pytest.approx(1.0)  # unflipped frames agree
    info = train.images[tb.image_ids[0]]
    unflipped = tb.unflip(tb.boxes[0][tb.box_valid[0]].double(), torch.zeros(int(tb.box_valid[0].sum()),
                                                                            dtype=torch.long))
    assert (iou_matrix(info.boxes, unflipped.numpy()).max(1) == 1.0).all()
