"""DIT (E-DIT / L-DIT): step-0 behaviour, injection schedules, batched decoder, gradients, overfitting, losses,
postprocessing to the original resolution, and CUDA autocast."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as coco_mask
from segment_anything.modeling import MaskDecoder, TwoWayTransformer
from torch import nn

from datasets.batch2d import ReferBatch2D
from grounding.backbone import TextAwareViT
from grounding.text.encoder import TextEncoder
from segmentation import DIT, DITCriterion, DITOutputs, DITPostprocess, TextInjection
from segmentation.fusion import WordPixelFusion
from segmentation.mask_decoder import build_sam_mask_decoder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The machine's 2 cores are shared with timed runs: keep these tests on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder()  # MiniLM shipped by a PyPI package: offline, frozen


def make_dit(text_encoder: TextEncoder, seed: int = 0, mlp_dim: int = 256, **kw) -> DIT:
    vit_kw = {k: kw.pop(k) for k in ("text_gate", "use_text_pad_mask", "global_all_blocks") if k in kw}
    torch.manual_seed(seed)
    return DIT(TextAwareViT.from_preset("tiny", **vit_kw), text_encoder,
               mask_decoder=build_sam_mask_decoder(mlp_dim=mlp_dim), **kw)


def make_batch(images: torch.Tensor, texts: list[str], gt: torch.Tensor | None = None) -> ReferBatch2D:
    B, _, S, _ = images.shape
    gt = torch.zeros(B, S, S) if gt is None else gt
    return ReferBatch2D(images=images, valid=torch.ones(B, S, S, dtype=torch.bool), gt_masks=gt,
                        pad_tl=torch.zeros(B, 2, dtype=torch.long), resized_hw=torch.full((B, 2), S),
                        original_hw=torch.full((B, 2), S), gt_original=[g > 0.5 for g in gt],
                        boxes=torch.zeros(B, 4), texts=texts, sample_ids=[f"t/{i}" for i in range(B)],
                        image_ids=list(range(B)), records=[None] * B)


TEXTS = ["the red box on the left", "a small dog"]


def image_features(model: DIT, batch: ReferBatch2D, with_text: bool) -> torch.Tensor:
    if not with_text:
        return model.image_encoder(batch.images)
    text, mask = model.encode_text(batch.texts, batch.images.device)
    return model.image_encoder(batch.images, text_hook=model.text_inject.hook(text), text_mask=mask)


# ------------------------------------------------------------------ step 0 and injection schedules
def test_zero_initialised_ldit_leaves_image_features_unchanged(text_encoder):
    model = make_dit(text_encoder, mode="ldit").train()  # train mode: dropout on, still exact
    batch = make_batch(torch.randn(2, 3, 128, 128), TEXTS)
    with torch.no_grad():
        assert torch.equal(image_features(model, batch, True), image_features(model, batch, False))
    # DIT's joint softmax (text_gate=False): zero slots are not inert (LayerNorm bias, spec §2.4).
    joint = make_dit(text_encoder, mode="ldit", text_gate=False).train()
    with torch.no_grad():
        assert not torch.allclose(image_features(joint, batch, True), image_features(joint, batch, False))
    # Injection with PyTorch's default init: the zero gate alone keeps the image stream exactly SAM's.
    live = make_dit(text_encoder, mode="ldit", zero_init_injection=False).train()
    assert all(torch.count_nonzero(layer.weight) > 0 for layer in live.text_inject.layers)
    with torch.no_grad():
        assert torch.equal(image_features(live, batch, True), image_features(live, batch, False))


def test_edit_code_and_paper_injection_schedules(text_encoder):
    code = TextInjection(384, 96, depth=4, mode="edit", edit_mode="code").eval()
    paper = TextInjection(384, 96, depth=4, mode="edit", edit_mode="paper").eval()
    ldit = TextInjection(384, 96, depth=4, mode="ldit").eval()
    assert (len(code.layers), len(paper.layers), len(ldit.layers)) == (4, 1, 4)
    assert all(torch.count_nonzero(p) == 0 for m in (code, paper, ldit) for p in m.layers.parameters())
    for m in (code, paper, ldit):
        torch.nn.init.normal_(m.layers[0].weight)
        for layer in m.layers[1:]:
            torch.nn.init.normal_(layer.weight)
    t, prev = torch.randn(2, 5, 384), torch.randn(2, 5, 96)
    with torch.no_grad():
        for m in (code, paper, ldit):  # block 0 always projects the text features
            torch.testing.assert_close(m.hook(t)(0, None), m.layers[0](m.text_in(t)))
        torch.testing.assert_close(code.hook(t)(2, prev), code.layers[2](prev))  # code: Linear_i(previous slots)
        assert paper.hook(t)(2, prev) is prev  # paper: previous slots unchanged
        torch.testing.assert_close(ldit.hook(t)(2, prev), ldit.layers[2](ldit.text_in(t)))  # L-DIT: fresh
    # Through the whole model at zero init with DIT's joint attention: E-DIT (code) == L-DIT (spec §2.4, derived),
    # while paper E-DIT differs, since its propagated slots are non-zero after block 0.
    batch = make_batch(torch.randn(1, 3, 128, 128), TEXTS[:1])
    outs = {}
    for mode, edit_mode in (("ldit", "code"), ("edit", "code"), ("edit", "paper")):
        with torch.no_grad():
            outs[edit_mode if mode == "edit" else mode] = make_dit(
                text_encoder, mode=mode, edit_mode=edit_mode, text_gate=False).eval()(batch).pred_logits
    torch.testing.assert_close(outs["code"], outs["ldit"])
    assert not torch.allclose(outs["paper"], outs["ldit"])


def test_text_slots_padding_truncation_and_zero_text(text_encoder):
    model = make_dit(text_encoder, text_slots=6)
    tokens, mask = model.encode_text(["a", "a very long sentence with far more than six word pieces"], "cpu")
    assert tokens.shape == (2, 6, 384) and mask.tolist() == [[True] * 3 + [False] * 3, [True] * 6]
    assert torch.count_nonzero(tokens[0, 3:]) == 0
    model = make_dit(text_encoder, zero_text=True, text_gate=False).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model(make_batch(images, ["the red box"])).pred_logits
        b = model(make_batch(images, ["a green ball"])).pred_logits
    torch.testing.assert_close(a, b)  # the words no longer matter (same token count)


def test_text_roles_slots_are_parsed_words_plus_their_role(text_encoder):
    """With ``text_roles`` a slot holds one parsed word plus the embedding of its role: the same word gets different
    slots as the referent's attribute and as the anchor's; padding stays zero; the roles learn."""
    model = make_dit(text_encoder, text_roles=True, text_slots=12)
    text = "the red cup left of the red star"
    tokens, mask = model.encode_text([text, "a cup"], "cpu")
    assert tokens.shape == (2, 12, 384) and mask.sum(1).tolist() == [8, 2]
    words = text_encoder([text.split(), ["a", "cup"]]).words
    roles = torch.tensor([[1, 1, 1, 2, 2, 3, 3, 3], [1, 1, 0, 0, 0, 0, 0, 0]])  # referent / relation / context
    torch.testing.assert_close(tokens[0, :8], words[0, :8] + model.role_embed.weight[roles[0]])
    torch.testing.assert_close(tokens[1, :2], words[1, :2] + model.role_embed.weight[roles[1, :2]])
    assert torch.count_nonzero(tokens[1, 2:]) == 0 and torch.count_nonzero(model.role_embed.weight[0]) == 0
    referent_red, anchor_red = tokens[0, 1] - words[0, 1], tokens[0, 6] - words[0, 6]
    assert not torch.allclose(referent_red, anchor_red)
    assert "role_embed." in model.new_parameter_prefixes
    batch = make_batch(torch.randn(2, 3, 64, 64), [text, "a cup"], gt=(torch.rand(2, 64, 64) > 0.7).float())
    DITCriterion()(model.train()(batch), batch)["loss_mask"].backward()
    grad = model.role_embed.weight.grad
    assert grad[1:].abs().sum(1).gt(0).all() and grad[0].abs().sum() == 0  # every role learns, padding does not
    assert make_dit(text_encoder).role_embed is None  # DIT's sub-word tokens by default


def test_pixel_word_fusion_attends_to_real_slots_and_multiplies():
    torch.manual_seed(0)
    fusion = WordPixelFusion(dim=16, text_dim=8)
    x, text = torch.randn(2, 16, 4, 4), torch.randn(2, 5, 8)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = fusion(x, text, mask)
    assert out.shape == x.shape and not torch.allclose(out, x)
    changed = text.clone()
    changed[0, 2:] = 100.0  # padded slots of row 0: must not matter
    torch.testing.assert_close(fusion(x, changed, mask)[0], out[0])
    # no text at all (a row of padding only) attends to every slot instead of dividing by zero
    assert torch.isfinite(fusion(x, text, torch.zeros(2, 5, dtype=torch.bool))).all()
    # multiplicative: a zero language vector leaves the map unchanged up to the output bias
    nn.init.zeros_(fusion.v.weight)
    nn.init.zeros_(fusion.v.bias)
    bias = fusion.out(fusion.norm(torch.zeros(16)))
    torch.testing.assert_close(fusion(x, text, mask), x + bias[None, :, None, None])
    still = WordPixelFusion(dim=16, text_dim=8, zero_init=True)
    torch.testing.assert_close(still(x, text, mask), x)  # pretrained start: exactly the map it was given


def test_dit_with_pixel_word_fusion_trains_it(text_encoder):
    model = make_dit(text_encoder, pixel_word_fusion=True).train()
    assert "fusion." in model.new_parameter_prefixes and make_dit(text_encoder).fusion is None
    batch = make_batch(torch.randn(2, 3, 64, 64), TEXTS, gt=(torch.rand(2, 64, 64) > 0.7).float())
    DITCriterion()(model(batch), batch)["loss_mask"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusion.parameters())


# ------------------------------------------------------------------ mask decoder batching
def test_batched_decoder_pairs_prompt_b_with_image_b_and_stock_builds_b_squared_rows():
    torch.manual_seed(0)
    ours = build_sam_mask_decoder().eval()
    stock = MaskDecoder(num_multimask_outputs=3, transformer_dim=256,
                        transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)).eval()
    stock.load_state_dict(ours.state_dict(), strict=True)  # same parameter names
    B = 3
    emb, pe = torch.randn(B, 256, 8, 8), torch.randn(1, 256, 8, 8)
    sparse, dense = torch.randn(B, 5, 256), torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        got, iou = ours(emb, pe, sparse, dense, multimask_output=False)
        loop = [stock(emb[b:b + 1], pe, sparse[b:b + 1], dense, multimask_output=False) for b in range(B)]
    assert got.shape == (B, 1, 32, 32) and iou.shape == (B, 1)
    torch.testing.assert_close(got, torch.cat([m for m, _ in loop]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(iou, torch.cat([i for _, i in loop]), atol=1e-5, rtol=1e-5)
    # The stock predict_masks repeats every image once per prompt row: B*B image rows for B prompt sets. In
    # segment-anything 1.0 the two-way transformer then fails on the mismatched batch (B*B keys vs B queries).
    rows = []
    stock.transformer.register_forward_pre_hook(lambda mod, args: rows.append(args[0].shape[0]))
    with pytest.raises(RuntimeError, match="must match"), torch.no_grad():
        stock(emb, pe, sparse, dense, multimask_output=False)
    assert rows == [B * B]
    with pytest.raises(ValueError, match="one image per prompt set"):
        ours(emb[:2], pe, sparse, dense, multimask_output=False)


def test_decoder_token_mask_equals_dropping_the_padded_prompts():
    torch.manual_seed(0)
    dec = build_sam_mask_decoder(transformer_dim=64, mlp_dim=128, num_heads=4).eval()
    names = list(dec.state_dict())
    B, N = 3, 6
    emb, pe = torch.randn(B, 64, 4, 4), torch.randn(1, 64, 4, 4)
    sparse, dense = torch.randn(B, N, 64), torch.randn(1, 64, 4, 4)
    lengths = [6, 2, 4]
    mask = torch.arange(N)[None, :] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        got, iou = dec.predict_masks(emb, pe, sparse, dense, token_mask=mask)
        for b, n in enumerate(lengths):  # the same image alone with only its real prompts
            alone, alone_iou = dec.predict_masks(emb[b:b + 1], pe, sparse[b:b + 1, :n], dense)
            torch.testing.assert_close(got[b:b + 1], alone, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(iou[b:b + 1], alone_iou, atol=1e-5, rtol=1e-5)
        plain, _ = dec.predict_masks(emb, pe, sparse, dense)  # no mask afterwards: SAM's decoder again
        full, _ = dec.predict_masks(emb, pe, sparse, dense, token_mask=torch.ones(B, N, dtype=torch.bool))
    torch.testing.assert_close(plain, full, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain[1], got[1], atol=1e-3)  # row 1's four padded prompts did change its masks
    assert list(dec.state_dict()) == names  # SAM's parameter names are kept


def test_dit_with_both_pad_masks_does_not_depend_on_the_number_of_text_slots(text_encoder):
    """With the ViT's and the decoder's pad masks, padded slots take part nowhere: 12 slots or 24 give the same
    masks for short expressions; without the decoder's mask they do not."""
    S = 64
    batch = make_batch(torch.randn(2, 3, S, S), TEXTS)
    outs = {}
    for pad_mask in (True, False):
        for slots in (12, 24):
            model = make_dit(text_encoder, text_slots=slots, decoder_pad_mask=pad_mask, text_gate=False,
                             zero_init_injection=False).eval()
            with torch.no_grad():
                outs[pad_mask, slots] = model(batch).pred_logits
    torch.testing.assert_close(outs[True, 12], outs[True, 24], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outs[False, 12], outs[False, 24], atol=1e-3)


# ------------------------------------------------------------------ forward / backward
@pytest.mark.parametrize(("mode", "edit_mode"), [("ldit", "code"), ("edit", "code"), ("edit", "paper")])
def test_forward_backward_reach_injection_and_vit(text_encoder, mode, edit_mode):
    model = make_dit(text_encoder, mode=mode, edit_mode=edit_mode).train()
    batch = make_batch(torch.randn(2, 3, 64, 64), TEXTS, gt=(torch.rand(2, 64, 64) > 0.7).float())
    out = model(batch)
    assert isinstance(out, DITOutputs)
    assert out.pred_logits.shape == (2, 64, 64) and out.low_res_logits.shape == (2, 16, 16)
    DITCriterion()(out, batch)["loss_mask"].backward()
    vit = model.image_encoder
    # Step 0: gated text path closed, so the zero-initialised injection gets no gradient yet; the gate does.
    assert vit.text_gate.grad.abs().sum() > 0
    assert vit.blocks[0].attn.qkv.weight.grad.abs().sum() > 0 and vit.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.text_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and
               not n.startswith("text_encoder."))  # every trainable parameter is used (DDP-safe)
    torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    model.zero_grad()
    DITCriterion()(model(batch), batch)["loss_mask"].backward()
    for layer in model.text_inject.layers:
        assert layer.weight.grad.abs().sum() > 0, "after one step the injection Linears receive gradients"
    # DIT's joint attention: the injection Linears receive gradients at step 0 directly.
    joint = make_dit(text_encoder, mode=mode, edit_mode=edit_mode, text_gate=False).train()
    DITCriterion()(joint(batch), batch)["loss_mask"].backward()
    assert joint.text_inject.layers[0].weight.grad.abs().sum() > 0


def train_steps(model: DIT, batch: ReferBatch2D, criterion: DITCriterion, steps: int,
                optimizer: type[torch.optim.Optimizer] = torch.optim.Adam) -> list[float]:
    """Train ``model`` on ``batch`` for ``steps`` (lr 1e-3, the sum of the criterion's terms); the losses."""
    opt = optimizer([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(criterion(model(batch), batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_overfits_one_image(text_encoder):
    torch.manual_seed(0)
    S = 64
    image = 0.3 * torch.randn(1, 3, S, S)
    gt = torch.zeros(1, S, S)
    gt[:, 16:40, 20:44] = 1.0
    image[:, 0][gt.bool()] += 1.5
    batch = make_batch(image, ["the red square"], gt)
    model = make_dit(text_encoder, mode="ldit")
    losses = train_steps(model, batch, DITCriterion(), 100)  # DIT's BCE: the only term is loss_mask
    model.eval()
    with torch.no_grad():
        pred = DITPostprocess(0.5)(model(batch), batch)[0]
    iou = (pred.mask & gt[0].bool()).sum() / (pred.mask | gt[0].bool()).sum()
    assert losses[-1] < 0.1 * losses[0], losses[::10]
    assert iou > 0.8, float(iou)
    assert model.image_encoder.text_gate.abs().max() > 0  # the text path opened


def two_colour_batch(n_images: int = 4, S: int = 64) -> ReferBatch2D:
    """Each picture holds a red and a green square (sides swapped every other picture) and appears twice, once
    as "the red one" and once as "the green one": only the words tell the two rows of a picture apart."""
    colours = {"red": torch.tensor([1.5, -1.0, -1.0]), "green": torch.tensor([-1.0, 1.5, -1.0])}
    gen = torch.Generator().manual_seed(0)
    images, masks, texts = [], [], []
    for i in range(n_images):
        image = 0.3 * torch.randn(3, S, S, generator=gen)
        rows = torch.randint(0, S - 20, (2,), generator=gen).tolist()
        order = ("red", "green") if i % 2 == 0 else ("green", "red")
        for row, col, name in zip(rows, (4, 36), order):
            mask = torch.zeros(S, S)
            mask[row:row + 20, col:col + 20] = 1.0
            image[:, mask.bool()] = colours[name][:, None]
            masks.append(mask)
            texts.append(f"the {name} one")
        images += [image, image]
    return make_batch(torch.stack(images), texts, torch.stack(masks))


def fit_and_score(model: DIT, batch: ReferBatch2D, steps: int) -> torch.Tensor:
    """Train on ``batch`` for ``steps`` (AdamW 1e-3, BCE + Dice); per-row IoU of the eval-mode masks (logit > 0)."""
    train_steps(model, batch, DITCriterion("bce_dice"), steps, torch.optim.AdamW)
    model.eval()
    with torch.no_grad():
        pred = model(batch).pred_logits > 0
    gt = batch.gt_masks > 0.5
    return (pred & gt).sum((1, 2)) / (pred | gt).sum((1, 2)).clamp(min=1)


def test_reads_the_words_to_choose_between_two_objects(text_encoder):
    """The same picture asks for a different square depending on the sentence: the model with the words fits every
    row; the same model with the text zeroed gives both rows of a picture one mask and cannot."""
    batch = two_colour_batch()
    iou = fit_and_score(make_dit(text_encoder), batch, steps=60)
    assert bool((iou > 0.8).all()), iou.tolist()
    iou_blind = fit_and_score(make_dit(text_encoder, zero_text=True), batch, steps=60)
    assert float(iou_blind.mean()) < 0.6, iou_blind.tolist()  # one mask per picture: at best both squares, 0.5


# ------------------------------------------------------------------ criterion
def test_criterion_terms():
    torch.manual_seed(0)
    logits, gt = torch.randn(2, 16, 16), torch.rand(2, 16, 16)
    gt[:, :, :4] = 0.0  # padding columns are background
    batch = make_batch(torch.zeros(2, 3, 16, 16), ["a", "b"], gt)
    out = DITOutputs(pred_logits=logits, low_res_logits=logits[:, ::4, ::4], iou_pred=torch.zeros(2))
    bce = DITCriterion("bce")(out, batch)
    assert set(bce) == {"loss_mask"}
    torch.testing.assert_close(bce["loss_mask"], F.binary_cross_entropy_with_logits(logits, gt))
    assert set(DITCriterion("bce_dice")(out, batch)) == {"loss_bce", "loss_dice"}
    focal = DITCriterion("focal_dice")(out, batch)
    assert set(focal) == {"loss_focal", "loss_dice"} and 0 < focal["loss_focal"] < bce["loss_mask"]
    perfect = DITOutputs(pred_logits=torch.where(gt > 0.5, 30.0, -30.0), low_res_logits=logits, iou_pred=logits)
    hard = make_batch(torch.zeros(2, 3, 16, 16), ["a", "b"], (gt > 0.5).float())
    assert DITCriterion("bce_dice")(perfect, hard)["loss_dice"] < 1e-3
    with pytest.raises(ValueError, match="loss must be one of"):
        DITCriterion("iou")


def test_attribute_loss_hand_cases_and_checks():
    from segmentation.criterion import attribute_loss

    labels = torch.tensor([[[0, 1], [2, -1]]])  # (B=1, S=2, S=2) for one kind; -1 is padding
    maps = labels[:, None]  # (1, K=1, 2, 2)
    sure = torch.full((1, 3, 2, 2), -20.0)
    for r in range(2):
        for c in range(2):
            if labels[0, r, c] >= 0:
                sure[0, labels[0, r, c], r, c] = 20.0
    assert attribute_loss((sure,), maps) < 1e-6  # same grid as the canvas: no resizing
    flat = torch.zeros(1, 3, 2, 2)
    torch.testing.assert_close(attribute_loss((flat,), maps), torch.tensor(np.log(3.0), dtype=torch.float32))
    # two kinds: the mean of the two cross-entropies; coarse logits are upsampled to the canvas
    two = torch.cat([maps, torch.zeros_like(maps)], 1)
    got = attribute_loss((flat, torch.zeros(1, 5, 1, 1)), two)
    torch.testing.assert_close(got, torch.tensor((np.log(3.0) + np.log(5.0)) / 2, dtype=torch.float32))
    with pytest.raises(ValueError, match="attribute heads"):
        attribute_loss((flat,), two)
    with pytest.raises(ValueError, match="label 2 but the head has 2 classes"):
        attribute_loss((torch.zeros(1, 2, 2, 2),), maps)


def test_attribute_head_learns_the_objects_colour_and_is_only_a_loss(text_encoder):
    """With ``attribute_classes`` the model predicts every pixel's object colour on its grid and the criterion adds
    ``loss_attr``, which training lowers; without maps (evaluation) there is no such term."""
    batch = two_colour_batch(n_images=2)
    maps = torch.zeros(len(batch), 1, 64, 64, dtype=torch.long)
    for b in range(0, len(batch), 2):  # rows 2i and 2i+1 share the picture: both squares, labelled by colour
        for r in (b, b + 1):
            colour = 1 if batch.texts[r] == "the red one" else 2
            maps[b, 0][batch.gt_masks[r] > 0.5] = colour
        maps[b + 1] = maps[b]
    with_maps = dataclasses.replace(batch, attr_maps=maps)
    model = make_dit(text_encoder, attribute_classes=[3])
    out = model(with_maps)
    assert len(out.attr_logits) == 1 and out.attr_logits[0].shape == (len(batch), 3, 4, 4)  # tiny: patch 16
    criterion = DITCriterion("bce_dice")
    assert set(criterion(out, batch)) == {"loss_bce", "loss_dice"}
    first = criterion(out, with_maps)["loss_attr"].item()
    train_steps(model, with_maps, criterion, 40, torch.optim.AdamW)
    assert criterion(model(with_maps), with_maps)["loss_attr"].item() < 0.5 * first
    assert "attribute_head." in model.new_parameter_prefixes
    with pytest.raises(ValueError, match="attribute_classes"):
        make_dit(text_encoder, attribute_classes=[1])


def test_referent_labels_are_the_targets_own_most_frequent_label():
    from segmentation.criterion import referent_labels

    maps = torch.zeros(3, 2, 4, 4, dtype=torch.long)
    maps[:, :, 3] = -1  # padding row
    maps[0, 0, :2, :2] = 3
    maps[0, 0, 0, 0] = 2  # a minority label under the target (a neighbour's edge)
    maps[0, 1, :2, :2] = 1
    maps[1, 0, 2:, 2:] = 5  # row 1's target lies on background only
    target = torch.zeros(3, 4, 4, dtype=torch.bool)
    target[0, :2, :2] = True
    target[1, :2, :2] = True
    assert referent_labels(maps, target).tolist() == [[3, 1], [-1, -1], [-1, -1]]


def test_attribute_prior_map_is_the_log_probability_of_the_asked_value():
    from segmentation.attribute_prior import EPS, AttributePrior

    prior = AttributePrior([3], text_dim=4, dim=1)
    with torch.no_grad():
        prior.embed.weight.fill_(1.0)
        prior.embed.bias.zero_()
    pix = torch.full((1, 3, 1, 2), -30.0)
    pix[0, 1, 0, 0] = 30.0  # left cell: value 1 for sure; right cell: value 2
    pix[0, 2, 0, 1] = 30.0
    asks_1 = torch.tensor([[-30.0, 30.0, -30.0]])
    out = prior([pix], [asks_1])[0, 0, 0]
    assert abs(out[0].item()) < 1e-4 and out[1].item() == pytest.approx(np.log(EPS), abs=0.1)
    unsure = torch.zeros(1, 3)  # a sentence that names no value: 1/3 everywhere
    assert torch.allclose(prior([pix], [unsure])[0, 0, 0], torch.full((2,), np.log(1 / 3 + EPS)), atol=1e-4)
    # the sentence side reads only the real slots
    text, mask = torch.randn(2, 5, 4), torch.tensor([[True, True, False, False, False]] * 2)
    text[1, :2] = text[0, :2]
    text[1, 2:] = 100.0  # row 1 differs from row 0 only in its padded slots
    a, b = prior.text_logits(text, mask)[0]
    torch.testing.assert_close(a, b)


def test_attribute_prior_reads_the_referents_colour_from_the_sentence(text_encoder):
    """Trained with ``loss_attr_text``, the sentence side names the colour of the referred square."""
    batch = two_colour_batch(n_images=2)
    maps = torch.zeros(len(batch), 1, 64, 64, dtype=torch.long)
    for b in range(len(batch)):
        for r in (b - b % 2, b - b % 2 + 1):  # the picture's two rows: both squares, labelled by colour
            maps[b, 0][batch.gt_masks[r] > 0.5] = 1 if batch.texts[r] == "the red one" else 2
    data = dataclasses.replace(batch, attr_maps=maps)
    model = make_dit(text_encoder, attribute_classes=[3], attribute_prior=True)
    criterion = DITCriterion("bce_dice")
    terms = criterion(model(data), data)
    assert {"loss_attr", "loss_attr_text"} <= set(terms)
    train_steps(model, data, criterion, 40, torch.optim.AdamW)
    model.eval()
    with torch.no_grad():
        asked = model(data).attr_text_logits[0].argmax(-1)
    assert asked.tolist() == [1 if t == "the red one" else 2 for t in batch.texts]
    with pytest.raises(ValueError, match="needs attribute_classes"):
        make_dit(text_encoder, attribute_prior=True)
    # with SAM weights to start from, the prior starts silent: SAM's embedding reaches the decoder unchanged
    sam = make_dit(text_encoder, attribute_classes=[3], attribute_prior=True, sam_checkpoint="sam.pth")
    assert not sam.attribute_prior.embed.weight.any() and not sam.attribute_prior.embed.bias.any()
    assert model.attribute_prior.embed.weight.any()


# ------------------------------------------------------------------ postprocess
def letterbox_batch(S: int, originals: list[tuple[int, int]], resized: list[tuple[int, int]],
                    pad: list[tuple[int, int]]) -> ReferBatch2D:
    B = len(originals)
    batch = make_batch(torch.zeros(B, 3, S, S), ["x"] * B)
    batch.pad_tl, batch.resized_hw = torch.tensor(pad), torch.tensor(resized)
    batch.original_hw = torch.tensor(originals)
    batch.gt_original = [torch.zeros(h, w, dtype=torch.bool) for h, w in originals]
    return batch


def test_postprocess_maps_canvas_square_back_to_original_pixels():
    # Landscape 16x32 and portrait 32x16 originals, long side to 64 (scale 2), centre-padded on a 64 canvas:
    # resized 32x64 at (16, 0) and 64x32 at (0, 16).
    S = 64
    batch = letterbox_batch(S, [(16, 32), (32, 16)], [(32, 64), (64, 32)], [(16, 0), (0, 16)])
    logits = torch.full((2, S, S), -10.0)
    # Original square rows 3..8, cols 10..17 (landscape) -> canvas rows 16+6..16+18, cols 20..36.
    logits[0, 22:34, 20:36] = 10.0
    # Original rows 5..12, cols 2..7 (portrait) -> canvas rows 10..26, cols 16+4..16+16.
    logits[1, 10:26, 20:32] = 10.0
    preds = DITPostprocess(0.5)(DITOutputs(logits, logits[:, ::4, ::4], torch.zeros(2)), batch)
    want0 = torch.zeros(16, 32, dtype=torch.bool)
    want0[3:9, 10:18] = True
    want1 = torch.zeros(32, 16, dtype=torch.bool)
    want1[5:13, 2:8] = True
    assert torch.equal(preds[0].mask, want0) and torch.equal(preds[1].mask, want1)
    assert preds[0].pred_mask.shape == batch.eval_gt_masks()[0].shape == (16 * 32,)
    assert torch.equal(preds[0].pred_mask, want0.reshape(-1))
    assert preds[0].score == pytest.approx(torch.sigmoid(torch.tensor(10.0)).item())
    record = preds[0].to_record()
    assert record["sample_id"] == "t/0" and record["image_id"] == 0 and record["text"] == "x"
    assert isinstance(record["mask_rle"]["counts"], str) and record["mask_rle"]["size"] == [16, 32]
    rle = {"size": record["mask_rle"]["size"], "counts": record["mask_rle"]["counts"].encode()}
    assert np.array_equal(coco_mask.decode(rle).astype(bool), want0.numpy())


def test_postprocess_threshold_is_on_probabilities():
    batch = letterbox_batch(8, [(8, 8)], [(8, 8)], [(0, 0)])
    logit = torch.logit(torch.tensor(0.4))  # probability 0.4 everywhere
    out = DITOutputs(torch.full((1, 8, 8), float(logit)), torch.zeros(1, 2, 2), torch.zeros(1))
    assert DITPostprocess(0.35)(out, batch)[0].mask.all()
    empty = DITPostprocess(0.5)(out, batch)[0]
    assert not empty.mask.any() and empty.score == 0.0
    with pytest.raises(ValueError, match="threshold"):
        DITPostprocess(1.5)


# ------------------------------------------------------------------ CUDA
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_forward_backward(text_encoder, dtype):
    model = make_dit(text_encoder, mode="ldit").cuda().train()
    with torch.no_grad():
        model.image_encoder.text_gate.fill_(0.3)
        for layer in model.text_inject.layers:
            torch.nn.init.normal_(layer.weight, std=0.02)
    batch = make_batch(torch.randn(2, 3, 128, 128), TEXTS, gt=(torch.rand(2, 128, 128) > 0.7).float()).to("cuda")
    with torch.no_grad():
        ref = model.eval()(batch).pred_logits
    model.train()
    with torch.autocast("cuda", dtype=dtype):
        out = model(batch)
        loss = DITCriterion("bce_dice")(out, batch)
    sum(loss.values()).backward()
    assert torch.isfinite(out.pred_logits).all() and out.pred_logits.shape == (2, 128, 128)
    assert torch.isfinite(model.text_inject.layers[1].weight.grad).all()
    assert model.image_encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
        low = model.eval()(batch).pred_logits.float()
    assert (low - ref).abs().mean() < 0.05 * ref.abs().mean() + 0.05


def test_pixel_branch_starts_as_sams_decoder_and_learns(text_encoder):
    model = make_dit(text_encoder, pixel_branch=True).train(False)
    images = torch.randn(2, 3, 128, 128)
    batch = make_batch(images, TEXTS)
    with torch.no_grad():
        with_branch = model(batch).pred_logits
        branch, model.pixel_branch = model.pixel_branch, None
        without = model(batch).pred_logits
        model.pixel_branch = branch
    assert torch.equal(with_branch, without)              # zero-initialised last layer: SAM's decoder at step 0
    assert "pixel_branch." in model.new_parameter_prefixes
    gt = torch.zeros(2, 128, 128)
    gt[:, 40:80, 30:90] = 1.0
    loss = DITCriterion("bce")(model.train()(make_batch(images, TEXTS, gt)), make_batch(images, TEXTS, gt))
    sum(loss.values()).backward()
    assert model.pixel_branch[-1].weight.grad.abs().sum() > 0


def test_spatial_prior_adds_to_the_decoder_input_and_learns(text_encoder):
    """The prior's stride-``patch`` map is added to the image embedding before the mask decoder; with a SAM
    checkpoint named its projection starts at zero (SAM's decoder input at step 0), and it gets gradients."""
    images = torch.randn(2, 3, 128, 128)
    batch = make_batch(images, TEXTS)
    model = make_dit(text_encoder, spatial_prior=8).train(False)
    assert model.spatial_prior.strides == (model.image_encoder.patch_size,)
    assert "spatial_prior." in model.new_parameter_prefixes
    seen: list[torch.Tensor] = []
    handle = model.mask_decoder.transformer.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        model(batch)
        text, mask = model.encode_text(batch.texts, images.device)
        embedding = model.image_encoder(images, text_hook=model.text_inject.hook(text), text_mask=mask)
        prior = model.spatial_prior(images)[0]
    handle.remove()
    dense = model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    assert prior.abs().sum() > 0 and torch.allclose(seen[0], embedding + prior + dense, atol=1e-5)
    zero = make_dit(text_encoder, spatial_prior=8, sam_checkpoint="unused.pth").train(False)
    plain = make_dit(text_encoder).train(False)
    zero.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        assert torch.equal(zero(batch).pred_logits, plain(batch).pred_logits)
    gt = torch.zeros(2, 128, 128)
    gt[:, 40:80, 30:90] = 1.0
    loss = DITCriterion("bce")(zero.train()(make_batch(images, TEXTS, gt)), make_batch(images, TEXTS, gt))
    sum(loss.values()).backward()
    assert zero.spatial_prior.proj[str(zero.image_encoder.patch_size)].weight.grad.abs().sum() > 0
