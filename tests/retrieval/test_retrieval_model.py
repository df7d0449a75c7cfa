"""The retrieval model on the tiny generated set: forward shapes, backward, permutation equivariance, the loss
variants, postprocessing, and overfitting a few images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from datasets.candidates import AnnotatedBoxes
from datasets.refboxes import refer_box_dataset
from datasets.synthetic.images import generate_synthetic2d
from datasets.transforms.boxes2d import BoxLetterbox
from grounding.metrics.box_evaluators import BoxRetrievalMetric
from grounding.retrieval import (
    BoxRetriever,
    RetrievalCriterion,
    RetrievalHead,
    RetrievalOutputs,
    RetrievalPostprocess,
    sine_box_embedding,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("s2d_model")
    generate_synthetic2d(out, preset="tiny", seed=0)
    return out


@pytest.fixture(scope="module")
def text_encoder():
    from grounding.text import TextEncoder

    return TextEncoder(max_length=24)


def _model(text_encoder, no_target: bool = False, pool: str = "mean", spatial_prior: int | None = None) -> BoxRetriever:
    from grounding.backbone import TextAwareViT

    torch.manual_seed(0)
    vit = TextAwareViT.from_preset("tiny", img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                   out_chans=32)
    return BoxRetriever(vit, text_encoder, RetrievalHead(32, 2, 2, 64, dropout=0.0, no_target=no_target),
                        pyramid_scales=(2.0, 1.0, 0.5), pyramid_dim=16, roi_pool=pool,
                        roi_size=3 if pool == "flatten" else 7, spatial_prior=spatial_prior)


def _batch(tiny: Path, split: str = "train", n: int = 3, cats="all"):
    ds = refer_box_dataset(tiny, "synthetic2d", split, BoxLetterbox(64), AnnotatedBoxes(), category_queries=cats)
    return ds.collate([ds[i] for i in range(min(n, len(ds)))])


def test_sine_embedding_layout() -> None:
    boxes = torch.tensor([[0.25, 0.5, 0.1, 0.2]])
    emb = sine_box_embedding(boxes, 32)
    assert emb.shape == (1, 32)
    # blocks (y, x, w, h) of 8; each interleaves sin and cos, the first frequency is coord * 2 pi
    assert emb[0, 0].item() == pytest.approx(math.sin(0.5 * 2 * math.pi), abs=1e-6)
    assert emb[0, 1].item() == pytest.approx(math.cos(0.5 * 2 * math.pi), abs=1e-6)
    assert emb[0, 8].item() == pytest.approx(math.sin(0.25 * 2 * math.pi), abs=1e-6)


@pytest.mark.parametrize("pool", ["mean", "flatten"])
def test_forward_backward_and_equivariance(tiny: Path, text_encoder, pool: str) -> None:
    model = _model(text_encoder, pool=pool)
    batch = _batch(tiny)
    out = model(batch)
    Q, N = len(batch.texts), batch.boxes.shape[1]
    assert out.logits.shape == (Q, N) and out.valid.shape == (Q, N)
    assert torch.isinf(out.logits[~out.valid]).all() and torch.isfinite(out.logits[out.valid]).all()
    terms = RetrievalCriterion()(out, batch)
    assert set(terms) == {"loss_rec", "loss_box"}
    sum(terms.values()).backward()
    for name in ("backbone.patch_embed.proj.weight", "pyramid.levels.0.0.weight", "box_tokens.mlp.0.weight",
                 "text_proj.weight", "head.score.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.text_encoder.parameters())  # frozen MiniLM
    # reordering an image's candidates reorders its logits and nothing else (no index embedding)
    model.eval()
    with torch.no_grad():
        ref = model(batch).logits
        n0 = int(batch.box_valid[0].sum())
        perm = torch.arange(N)
        perm[:n0] = torch.randperm(n0, generator=torch.Generator().manual_seed(1))
        batch.boxes[0] = batch.boxes[0][perm]
        moved = model(batch).logits
    rows = batch.query_image == 0
    assert torch.allclose(moved[rows][:, :n0], ref[rows][:, perm[:n0]], atol=1e-5)
    assert torch.allclose(moved[~rows], ref[~rows], atol=1e-5)


def test_spatial_prior_levels_and_gradients(tiny: Path, text_encoder) -> None:
    from grounding.backbone.spatial_prior import SpatialPrior

    prior = SpatialPrior([4.0, 8.0, 16.0], dim=16, width=8)
    maps = prior(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 16, 8, 8), (2, 16, 4, 4)]
    assert len(prior.stages) == 3 and set(prior.proj) == {"4", "8", "16"}  # no stride-32 stage: nothing unused
    with pytest.raises(ValueError, match="strides"):
        SpatialPrior([2.0, 8.0], dim=16)
    # a canvas that is not a multiple of 16: the stride-16 map is 5 x 5 where the features are 4 x 4 -> resampled
    odd = torch.randn(2, 3, 72, 72)
    small = SpatialPrior([16.0], dim=16, width=8)
    feats = torch.randn(2, 16, 4, 4)
    (out,) = small.add_to([feats], odd)
    raw = small(odd)[0]
    assert raw.shape[-2:] == (5, 5)
    expected = feats + torch.nn.functional.interpolate(raw, size=(4, 4), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="feature maps"):
        small.add_to([feats, feats], odd)
    # in the model its maps are added to the pyramid levels of the same stride (patch 8: strides 4, 8, 16)
    model = _model(text_encoder, spatial_prior=8)
    batch = _batch(tiny)
    model.spatial_prior.requires_grad_(False)
    plain = [lvl.detach() for lvl in model.pyramid(model.backbone(batch.images))]
    with_prior = model.encode_images(batch.images)
    added = model.spatial_prior(batch.images)
    for lvl, p, w in zip(plain, added, with_prior):
        assert torch.allclose(w, lvl + p, atol=1e-5)
    model.spatial_prior.requires_grad_(True)
    sum(RetrievalCriterion()(model(batch), batch).values()).backward()
    for name, param in model.spatial_prior.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_loss_variants(tiny: Path) -> None:
    batch = _batch(tiny, cats=None)
    Q, N = len(batch.texts), batch.boxes.shape[1]
    logits = torch.randn(Q, N).masked_fill(~batch.box_valid[batch.query_image], float("-inf")).requires_grad_()
    out = RetrievalOutputs(logits=logits, valid=batch.box_valid[batch.query_image])
    ce = RetrievalCriterion("ce")(out, batch)["loss_rec"]
    anyp = RetrievalCriterion("any_positive")(out, batch)["loss_rec"]
    assert torch.allclose(ce, anyp)  # annotated candidates: exactly one positive per expression
    with_cats = _batch(tiny)
    Qc, Nc = len(with_cats.texts), with_cats.boxes.shape[1]
    valid_c = with_cats.box_valid[with_cats.query_image]
    out_c = RetrievalOutputs(torch.randn(Qc, Nc).masked_fill(~valid_c, float("-inf")), valid_c)
    both = RetrievalCriterion(rec_categories=True)(out_c, with_cats)["loss_rec"]
    assert torch.isfinite(both) and not torch.allclose(both, RetrievalCriterion()(out_c, with_cats)["loss_rec"])
    batch.targets[:] = -1
    batch.positives[:] = False
    empty = RetrievalCriterion(box_loss=False)(out, batch)["loss_rec"]
    assert empty.item() == 0.0 and empty.requires_grad
    with_none = RetrievalOutputs(logits=logits, valid=out.valid, no_target_logits=torch.zeros(Q))
    assert RetrievalCriterion()(with_none, batch)["loss_rec"] > 0  # "no target" is the answer now


def test_postprocess_answers_and_detections(tiny: Path) -> None:
    batch = _batch(tiny, "val", n=2)
    valid = batch.box_valid[batch.query_image]
    logits = torch.full(valid.shape, -5.0)
    logits[:, 0] = 5.0
    logits[:, 1] = 0.5  # sigmoid 0.62: in the multi-box answer
    logits = logits.masked_fill(~valid, float("-inf"))
    preds = RetrievalPostprocess(threshold=0.5, max_dets_per_image=3)(RetrievalOutputs(logits, valid), batch)
    answers = [p for p in preds if hasattr(p, "pred_box")]
    dets = [p for p in preds if hasattr(p, "category_ids")]
    assert len(answers) == len(batch) and len(dets) == batch.num_images
    assert torch.equal(answers[0].pred_box.float(), batch.boxes[0, 0]) and answers[0].index == 0
    assert answers[0].multi_boxes.shape == (2, 4) and answers[0].score == pytest.approx(torch.tensor(5.0).sigmoid())
    assert all(d.scores.numel() == 3 for d in dets) and (dets[0].scores[:-1] >= dets[0].scores[1:]).all()
    record = answers[0].to_record()
    assert record["bbox"][2] > 0 and 0.0 <= record["iou"] <= 1.0 and record["sample_id"] == batch.sample_ids[0]
    # the "no target" logit wins: no box, counted wrong
    none = RetrievalOutputs(logits, valid, no_target_logits=torch.full((valid.shape[0],), 9.0))
    answers = [p for p in RetrievalPostprocess()(none, batch) if hasattr(p, "pred_box")]
    assert answers[0].index == -1 and answers[0].to_record()["bbox"] is None
    metric = BoxRetrievalMetric()
    metric.update(answers, batch)
    assert float(metric.compute()["overall/Acc@0.5"]) == 0.0


def test_overfits_a_few_images(tiny: Path, text_encoder) -> None:
    model = _model(text_encoder)
    batch = _batch(tiny, "train", n=2)
    crit = RetrievalCriterion()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    first = None
    for _ in range(80):
        terms = crit(model(batch), batch)
        loss = terms["loss_rec"] + terms["loss_box"]
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        preds = RetrievalPostprocess()(model(batch), batch)
    metric = BoxRetrievalMetric()
    metric.update(preds, batch)
    assert float(loss.detach()) < 0.2 * first
    assert float(metric.compute()["overall/Acc@0.5"]) == 100.0
