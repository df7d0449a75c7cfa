"""RG-SAN end to end on tiny prepared scenes: forward/backward, criterion, postprocess, flags, overfitting, config."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from box_scenes import COLOURS, SCENE_A, SCENE_B
from hydra.utils import instantiate

from datasets.records import ReferRecord
from datasets.refer3d import NO_CENTER, Refer3DDataset
from datasets.transforms import TrainTransform, ValTransform
from grounding.engine.config import load_config
from grounding.metrics.masks import mask_iou
from grounding.text import TextEncoder
from pointcloud.backbone import SparseUNet
from pointcloud.checkpoint import CheckpointMismatchError
from pointcloud.rgsan import RGSAN, RGSANCriterion, RGSANOutputs, RGSANPostprocess, mask_to_rle, rle_to_mask

WEIGHTS = {"loss_bce": 1.0, "loss_dice": 1.0, "loss_score": 0.5, "loss_position": 0.5}


def record(scene: str, ann: int, obj: int, text: str) -> ReferRecord:
    return ReferRecord(scene, ann, (obj,), "box", text, "scanrefer", unique=ann % 2 == 0)


RECORDS = ([record(SCENE_A, k, 10 + k, f"the {c} box is on the floor.") for k, c in enumerate(COLOURS)]
           + [record(SCENE_B, 0, 11, "a blue box next to the yellow one"),
              record(SCENE_B, 1, 12, "this is a green box. it is near the wall."),
              record(SCENE_B, 2, 30, "the tiny thing on the floor")])


def batch_of(scenes: Path, records: list[ReferRecord], transform=None, items: list[int] | None = None):
    ds = Refer3DDataset(scenes, records, transform or ValTransform(), max_descriptions=16, seed=3)
    return ds.collate([ds[i] for i in (items if items is not None else range(len(ds)))])


def build(encoder: TextEncoder, seed: int = 0, **kwargs) -> RGSAN:
    torch.manual_seed(seed)
    return RGSAN(SparseUNet(levels=3), encoder, **kwargs)


def weighted(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return sum(WEIGHTS[k] * v for k, v in terms.items())


# ---------------------------------------------------------------------------------------------------- model
def test_forward_backward_shapes_and_gradients(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder).train()
    out = model(batch)
    d, s_max = len(batch), int(batch.sp_counts.max())
    assert isinstance(out, RGSANOutputs)
    assert out.pred_masks.shape == (7, d, s_max) and out.pred_scores.shape == (7, d)
    assert out.pred_positions.shape == (7, d, 3) and out.sp_padding.shape == (d, s_max)
    assert out.sp_padding.tolist() == [[s >= int(batch.sp_counts[int(b)]) for s in range(s_max)]
                                       for b in batch.desc_scene]
    assert out.output_words[:4] == ["box"] * 4 and out.output_words[5] == "box"
    terms = RGSANCriterion()(out, batch)
    assert set(terms) == set(WEIGHTS) and all(torch.isfinite(v) for v in terms.values())
    weighted(terms).backward()
    named = dict(model.named_parameters())
    for name in ("backbone.input_conv.0.weight", "text_proj.weight", "tlm.layers.5.cross_attn.rpe.table_v",
                 "tlm.ddi.0.graph_attn.e.weight", "tlm.offset.4.weight", "tlm.root", "tlm.lap_proj.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.text_encoder.parameters())  # frozen, and stays in eval mode
    assert not model.text_encoder.training


@pytest.mark.parametrize("flags", [{}, {"position_refinement": False, "rule_guided": False}])
def test_every_trainable_parameter_gets_a_gradient(scenes: Path, encoder: TextEncoder, flags: dict) -> None:
    # What DDP without find_unused_parameters needs: the last DDI layer's edge update (nothing reads its output) is
    # frozen, and the decoder norm exists only with the position refinement that reads it.
    batch = batch_of(scenes, RECORDS, TrainTransform())
    model = build(encoder, num_layers=2, **flags).train()
    weighted({k: v for k, v in RGSANCriterion()(model(batch), batch).items() if k in WEIGHTS}).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad and not n.startswith("text_encoder.")}
    assert frozen and all(n.startswith("tlm.ddi.1.graph_attn.") for n in frozen)


def test_sentinel_target_keeps_losses_finite_and_skips_position(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS)
    sentinel = [r.object_ids for r in batch.records].index((30,))
    assert (batch.gt_center[sentinel] == NO_CENTER).all() and not batch.gt_spmask[sentinel].any()
    model = build(encoder).train()
    out = model(batch)
    terms = RGSANCriterion()(out, batch)
    assert all(torch.isfinite(v) for v in terms.values())
    keep = [j for j in range(len(batch)) if j != sentinel]
    expected = sum((out.pred_positions[i, keep] - batch.gt_center[keep]).abs().mean() for i in range(7))
    torch.testing.assert_close(terms["loss_position"], expected)
    positions = out.pred_positions
    positions.retain_grad()
    terms["loss_position"].backward()
    assert (positions.grad[:, sentinel] == 0).all() and positions.grad[:, keep].abs().sum() > 0


def test_batch_equals_scenes_alone_in_eval(scenes: Path, encoder: TextEncoder) -> None:
    model = build(encoder).eval()
    post = RGSANPostprocess()
    with torch.no_grad():
        both = model(batch_of(scenes, RECORDS))
        alone = [model(batch_of(scenes, RECORDS, items=[i])) for i in (0, 1)]
        again = model(batch_of(scenes, RECORDS))
    torch.testing.assert_close(both.pred_masks, again.pred_masks, rtol=0, atol=0)  # no random PE flip in eval
    for i, one in enumerate(alone):
        rows = slice(0, 4) if i == 0 else slice(4, 7)
        s = one.pred_masks.shape[-1]
        torch.testing.assert_close(both.pred_masks[:, rows, :s], one.pred_masks, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(both.pred_positions[:, rows], one.pred_positions, rtol=1e-4, atol=1e-4)
    joint = post(both, batch_of(scenes, RECORDS))
    separate = [p for i in (0, 1) for p in post(alone[i], batch_of(scenes, RECORDS, items=[i]))]
    assert [p.sample_id for p in joint] == [p.sample_id for p in separate]
    assert all(torch.equal(a.pred_mask, b.pred_mask) for a, b in zip(joint, separate))


def test_flags_change_the_model(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS)
    root = build(encoder, rule_guided=False).eval()
    fixed = build(encoder, position_refinement=False).eval()
    assert fixed.tlm.offset is None and all(layer.cross_attn.rpe is None for layer in fixed.tlm.layers)
    assert all(layer.cross_attn.rpe is None for layer in build(encoder, use_rpe=False).tlm.layers)
    with torch.no_grad():
        out_root, out_fixed = root(batch), fixed(batch)
    graphs = [g for _, g in root.parse(batch.texts)]
    assert out_root.query_index.tolist() == [g.root_word for g in graphs]
    assert out_root.output_words[0] == "is" and out_root.rules[0] == "root_word"
    assert (out_fixed.pred_positions == out_fixed.pred_positions[:1]).all()  # never refined
    assert not out_fixed.position_supervised
    assert RGSANCriterion()(out_fixed, batch)["loss_position"] == 0


def test_param_groups_and_lazy_pretrained_loading(scenes: Path, encoder: TextEncoder, tmp_path: Path) -> None:
    model = build(encoder, backbone_checkpoint=str(tmp_path / "not_yet.pth"))  # nothing is read in __init__
    groups = {g["name"]: g for g in model.param_groups()}
    assert set(groups) == {"backbone", "decoder"}  # frozen text encoder: no group
    assert math.isclose(groups["backbone"]["lr_scale"], 0.01) and groups["decoder"]["lr_scale"] == 1.0
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    source = SparseUNet(levels=3)
    state = {f"{k}": v + 1.0 if v.is_floating_point() else v for k, v in source.state_dict().items()}
    torch.save({"net": {**state, "decoder.extra": torch.zeros(2)}}, tmp_path / "not_yet.pth")
    report = model.load_pretrained()
    assert report is not None and report.ok and report.ignored == ["decoder.extra"]
    for k, v in model.backbone.state_dict().items():
        torch.testing.assert_close(v, state[k])
    state.pop("input_conv.0.weight")
    torch.save(state, tmp_path / "not_yet.pth")
    with pytest.raises(CheckpointMismatchError, match="input_conv.0.weight"):
        model.load_pretrained()
    assert build(encoder).load_pretrained() is None


# ---------------------------------------------------------------------------------------------------- criterion
def test_criterion_against_hand_values() -> None:
    big = 20.0
    masks = torch.tensor([[[0.0, 0.0, 0.0], [big, -big, 7.0]],      # prediction 0
                          [[10.0, -10.0, -10.0], [big, -big, 7.0]]])  # prediction 1; column 2 of d1 is padding
    out = SimpleNamespace(pred_masks=masks, pred_scores=torch.tensor([[0.3, 0.8], [0.5, 0.8]]),
                          pred_positions=torch.tensor([[[1.5, 2.0, 2.0], [100.0, 100.0, 100.0]],
                                                       [[1.0, 2.0, 3.0], [-50.0, 0.0, 0.0]]]),
                          sp_padding=torch.tensor([[False, False, False], [False, False, True]]),
                          position_supervised=True)
    batch = SimpleNamespace(gt_spmask=torch.tensor([[True, False, False], [True, False, False]]),
                            gt_center=torch.tensor([[1.0, 2.0, 3.0], [NO_CENTER] * 3]))
    terms = RGSANCriterion()(out, batch)
    tiny = math.log1p(math.exp(-big))  # BCE of a confident correct logit
    sig10 = 1 / (1 + math.exp(-10.0))
    # BCE: prediction 0 -> (ln 2 + tiny) / 2; prediction 1 -> (log1p(e^-10) + tiny) / 2 (padding excluded).
    bce = (math.log(2) + tiny) / 2 + (math.log1p(math.exp(-10.0)) + tiny) / 2
    # Dice d0 pred 0: p = 0.5 each, sum p y = 0.5, sum p = 1.5, sum y = 1 -> 1 - 2 / 3.5.
    p1 = [sig10, 1 - sig10, 1 - sig10]
    dice_d0_p1 = 1 - (2 * p1[0] + 1) / (sum(p1) + 1 + 1)
    s20 = 1 / (1 + math.exp(-big))
    dice_d1 = 1 - (2 * s20 + 1) / (s20 + (1 - s20) + 1 + 1)
    dice = (1 - 2 / 3.5 + dice_d1) / 2 + (dice_d0_p1 + dice_d1) / 2
    # Score: prediction 0 -> only d1 (IoU 1; d0 has IoU 1/3) -> (0.8 - 1)^2; prediction 1 -> both IoU 1.
    score = 0.04 + (0.25 + 0.04) / 2
    # Position: d1 is the sentinel; d0 errors (0.5, 0, 1) / 3 coordinates, then 0.
    assert math.isclose(terms["loss_bce"].item(), bce, rel_tol=1e-5)
    assert math.isclose(terms["loss_dice"].item(), dice, rel_tol=1e-5)
    assert math.isclose(terms["loss_score"].item(), score, rel_tol=1e-5)
    assert math.isclose(terms["loss_position"].item(), 0.5, rel_tol=1e-6)
    out.position_supervised = False
    assert RGSANCriterion()(out, batch)["loss_position"].item() == 0.0


# ---------------------------------------------------------------------------------------------------- postprocess
@pytest.mark.parametrize("mask", [[], [0, 0], [1, 1, 1], [1, 0, 0, 1, 1, 0, 1], [0, 1, 1, 0]])
def test_rle_round_trip(mask: list[int]) -> None:
    m = torch.tensor(mask, dtype=torch.bool)
    rle = mask_to_rle(m)
    assert torch.equal(rle_to_mask(rle, len(mask)), m)
    assert sum(length for _, length in rle) == sum(mask)
    with pytest.raises(ValueError, match="does not fit"):
        rle_to_mask([[len(mask), 1]], len(mask))


def _oracle_outputs(batch) -> SimpleNamespace:
    """Outputs whose final mask is exactly each description's gt superpoints."""
    gt = batch.gt_spmask.float()
    masks = (gt * 20 - 10)[None].repeat(7, 1, 1)
    return SimpleNamespace(pred_masks=masks, pred_scores=torch.ones(7, len(batch)),
                           pred_positions=torch.zeros(7, len(batch), 3),
                           sp_padding=batch.sp_padding_mask()[batch.desc_scene],
                           output_words=["box"] * len(batch), rules=["subject"] * len(batch))


def test_postprocess_masks_in_original_point_order(scenes: Path) -> None:
    batch = batch_of(scenes, RECORDS)
    preds = RGSANPostprocess()(_oracle_outputs(batch), batch)
    gts = batch.eval_gt_masks()
    for j, p in enumerate(preds):
        assert p.pred_mask.shape == (batch.num_original_points[int(batch.desc_scene[j])],)
        if batch.gt_spmask[j].any():  # pure superpoints: the superpoint mask is exactly the object
            assert torch.equal(p.pred_mask, gts[j])
        rec = json.loads(json.dumps(p.to_record()))
        assert torch.equal(rle_to_mask(rec["pred_mask_rle"], rec["num_points"]), p.pred_mask)
        assert rec["num_pred_points"] == int(p.pred_mask.sum()) and rec["sample_id"] == batch.sample_ids[j]
    # Subsampled training batch: predictions land on the kept points' original indices, the rest is False.
    sub = batch_of(scenes, RECORDS, TrainTransform(aug=False, elastic=False, color_std=0, max_npoint=300))
    preds = RGSANPostprocess()(_oracle_outputs(sub), sub)
    for j, p in enumerate(preds):
        b = int(sub.desc_scene[j])
        kept = sub.point_index[sub.point_slice(b)]
        inst = sub.instance[sub.point_slice(b)]
        assert not p.pred_mask[np.setdiff1d(np.arange(len(p.pred_mask)), kept.numpy())].any()
        if sub.gt_spmask[j].any():
            assert torch.equal(p.pred_mask[kept], torch.isin(inst, torch.tensor(sub.object_ids[j])))


# ---------------------------------------------------------------------------------------------------- learning
def test_overfits_one_scene(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS[:4])  # one scene, four colours, target word "box" for all
    model = build(encoder, seed=1).train()
    criterion = RGSANCriterion()
    groups = [dict(g, lr=1e-3 * g["lr_scale"]) for g in model.param_groups()]  # as GroundingTask does
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    losses = []
    for _ in range(100):  # ~25 s on 2 cores; at lr 1e-3 all four masks are exact from step ~90
        loss = weighted(criterion(model(batch), batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        preds = RGSANPostprocess()(model(batch), batch)
    ious = [mask_iou(p.pred_mask, g).item() for p, g in zip(preds, batch.eval_gt_masks())]
    assert losses[-1] < 0.05 * losses[0], losses
    assert min(ious) > 0.9, ious


# ---------------------------------------------------------------------------------------------------- config
def test_model_config_instantiates_with_encoder_width(tmp_path: Path) -> None:
    cfg = load_config("train", ["model=rgsan", f"run_dir={tmp_path}"])
    model = instantiate(cfg.model.net)
    assert isinstance(model, RGSAN) and model.text_proj.in_features == model.text_encoder.dim == 384
    assert model.backbone_checkpoint is None and model.parser.max_words == 78
    assert set(cfg.model.loss_weights) == set(WEIGHTS) and dict(cfg.model.loss_weights) == WEIGHTS
    assert isinstance(instantiate(cfg.model.criterion), RGSANCriterion)
    assert isinstance(instantiate(cfg.model.postprocess), RGSANPostprocess)
    metric = instantiate(cfg.model.evaluator)
    assert metric.strict and list(metric.thresholds) == [0.25, 0.5]


def test_words_beyond_the_token_budget_warn_and_stay_finite(scenes: Path, caplog: pytest.LogCaptureFixture) -> None:
    short = TextEncoder(max_length=6)  # [CLS] + 4 word pieces + [SEP]: later words get no feature
    model = build(short).eval()
    batch = batch_of(scenes, RECORDS)
    with caplog.at_level("WARNING", logger="pointcloud.rgsan.model"), torch.no_grad():
        out = model(batch)
    assert "got no text feature" in caplog.text
    assert torch.isfinite(out.pred_masks).all()


# ---------------------------------------------------------------------------------------------------- auxiliary
def test_superpoint_majority_by_hand() -> None:
    from pointcloud.rgsan.criterion import IGNORE, superpoint_majority

    label = torch.tensor([3, 3, 1, -100, -100, 2, 2, 5, 0])
    sp = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2, 3])
    # sp0: 3 x2, 1 x1 (the unlabelled point does not vote); sp1: nothing labelled; sp2: 2 x2 beats 5 x1; sp3: 0
    assert superpoint_majority(label, sp, 5, 4).tolist() == [3, IGNORE, 2, 0, IGNORE]  # 5 >= C: unlabelled


def test_semantic_head_adds_a_trainable_loss_term(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS)
    plain = build(encoder)
    assert "loss_semantic" not in RGSANCriterion()(plain(batch), batch)  # the published model: no such term
    model = build(encoder, aux_semantic_classes=20).train()
    out = model(batch)
    assert out.sp_semantic_logits.shape == (int(batch.sp_offsets[-1]), 20)
    terms = RGSANCriterion()(out, batch)
    assert terms["loss_semantic"].item() == pytest.approx(
        torch.nn.functional.cross_entropy(out.sp_semantic_logits, torch.full((out.sp_semantic_logits.shape[0],), 4))
        .item(), rel=1e-5)  # every point of these scenes has ScanNet-20 label 4
    terms["loss_semantic"].backward()
    assert model.backbone.input_conv[0].weight.grad.abs().sum() > 0  # it reaches the backbone


def test_mask_position_prior_by_hand() -> None:
    from pointcloud.rgsan.tlm import TextLocalizationModule

    torch.manual_seed(0)
    tlm = TextLocalizationModule(sp_channels=4, dim=8, num_heads=2, ffn_dim=16, num_layers=1,
                                 mask_position_prior=True)
    xs = torch.randn(1, 2, 8)                              # one scene, two queries
    centres = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [3.0, 0.0, 1.0]]])
    ref = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 2.0, 0.0]]], requires_grad=True)
    zero_feats = torch.zeros(1, 3, 8)                       # content term 0: only the prior is left
    pad = torch.zeros(1, 3, dtype=torch.bool)
    masks, _, _ = tlm._predict(xs, zero_feats, pad, torch.tensor([0, 0]), torch.tensor([0, 1]), ref, centres)
    w = math.log1p(math.exp(-3.0))                           # softplus of the initial bias, per m^2 and axis
    expected = -w * torch.tensor([[0.0, 5.0, 10.0], [5.0, 0.0, 4.0 + 4.0 + 1.0]])
    torch.testing.assert_close(masks, expected)
    masks.sum().backward()
    assert ref.grad.abs().sum() > 0                          # the mask loss reaches the position
    assert tlm.prior_width.weight.grad.abs().sum() > 0
    plain = TextLocalizationModule(sp_channels=4, dim=8, num_heads=2, ffn_dim=16, num_layers=1)
    flat, _, _ = plain._predict(xs, zero_feats, pad, torch.tensor([0, 0]), torch.tensor([0, 1]), ref, centres)
    assert (flat == 0).all()                                 # the published head ignores positions


def test_mask_position_prior_trains_the_refinement(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS)
    model = build(encoder, mask_position_prior=True).train()
    terms = RGSANCriterion()(model(batch), batch)
    (terms["loss_bce"] + terms["loss_dice"]).backward()     # no position loss in this sum
    named = dict(model.named_parameters())
    for name in ("tlm.prior_width.weight", "tlm.offset.4.weight"):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------- gpu
@pytest.mark.gpu
def test_cuda_forward_matches_cpu_and_mixed_precision_trains(scenes: Path, encoder: TextEncoder) -> None:
    batch = batch_of(scenes, RECORDS)
    model = build(encoder, seed=4).eval()
    with torch.no_grad():
        want = model(batch)
        model.cuda()
        got = model(batch.to("cuda"))
    torch.testing.assert_close(got.pred_masks.cpu(), want.pred_masks, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(got.pred_positions.cpu(), want.pred_positions, rtol=2e-3, atol=2e-3)
    # fp16 autocast (trainer precision 16-mixed): finite losses and gradients, and the loss falls
    model.train()
    cuda_batch = batch.to("cuda")
    criterion = RGSANCriterion()
    opt = torch.optim.AdamW([dict(g, lr=1e-3 * g["lr_scale"]) for g in model.param_groups()])
    scaler = torch.amp.GradScaler("cuda")
    losses = []
    # 40 steps: GradScaler skips the first few (inf gradients at its initial scale 2**16, as in Lightning), and
    # on the CPU in fp32 this loop reaches 0.35 of the first loss at step 40 (0.49 at step 30).
    for _ in range(40):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = weighted(criterion(model(cuda_batch), cuda_batch))
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and sum(losses[-3:]) / 3 < 0.55 * losses[0], losses
    assert scaler.get_scale() >= 1.0  # the scale did not collapse (no persistent overflow)
