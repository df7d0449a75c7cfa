"""TextAwareViT: SAM parity without text, run-time pos-embed resize, attention layouts with text slots."""

from __future__ import annotations

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
from torch import nn
from vit_helpers import randomise

from grounding.backbone import SAM_VIT_PRESETS, TextAwareViT

SMALL = {"img_size": 1024, "patch_size": 16, "embed_dim": 32, "depth": 2, "num_heads": 2, "out_chans": 32,
         "window_size": 14, "global_attn_indexes": (1,)}




def tiny(**kw) -> TextAwareViT:
    torch.manual_seed(0)
    vit = TextAwareViT.from_preset("tiny", **kw).eval()
    randomise(vit)
    return vit


def test_no_text_windowed_reproduces_sam_encoder_at_1024():
    torch.manual_seed(0)
    ref = ImageEncoderViT(**SMALL, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
                          use_rel_pos=True).eval()
    randomise(ref)
    ours = TextAwareViT(**SMALL, global_all_blocks=False, text_gate=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # same parameter names, same shapes
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        want, got = ref(x), ours(x)
    assert got.shape == (1, 32, 64, 64)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)


def test_pos_embed_resized_bicubically_to_32x32_at_512():
    torch.manual_seed(0)
    vit = TextAwareViT(**{**SMALL, "depth": 1, "global_attn_indexes": (0,)}).eval()
    randomise(vit)
    assert vit.pos_embed_at((64, 64)) is vit.pos_embed  # pretraining grid: the parameter itself
    pe = vit.pos_embed_at((32, 32))
    want = F.interpolate(vit.pos_embed.permute(0, 3, 1, 2), size=(32, 32), mode="bicubic", align_corners=False)
    assert pe.shape == (1, 32, 32, 32)
    torch.testing.assert_close(pe, want.permute(0, 2, 3, 1))
    assert vit.pos_embed.shape == (1, 64, 64, 32)  # the stored parameter keeps its pretrained shape
    with torch.no_grad():
        out = vit(torch.randn(1, 3, 512, 512))
    assert out.shape == (1, 32, 32, 32)


def test_presets_match_sam_sizes():
    counts = {"vit_b": 89_670_912, "vit_l": 308_278_272, "vit_h": 637_026_048}  # spec §4.2, image encoder
    for name, want in counts.items():
        with torch.device("meta"):
            vit = TextAwareViT.from_preset(name)
        gate = vit.text_gate.numel()
        assert sum(p.numel() for p in vit.parameters()) - gate == want
        assert gate == SAM_VIT_PRESETS[name]["depth"] * SAM_VIT_PRESETS[name]["num_heads"]
    with pytest.raises(ValueError, match="unknown TextAwareViT preset"):
        TextAwareViT.from_preset("vit_x")


def reference_block(vit: TextAwareViT, i: int, x: torch.Tensor, text: torch.Tensor, valid: torch.Tensor | None):
    """Naive joint/gated attention of one global block, written from the spec (not from the module)."""
    blk = vit.blocks[i]
    B, h, w, C = x.shape
    H, d, T = blk.attn.num_heads, C // blk.attn.num_heads, text.shape[1]
    seq = torch.cat([blk.norm1(text), blk.norm1(x).reshape(B, h * w, C)], 1)
    q, k, v = blk.attn.qkv(seq).reshape(B, T + h * w, 3, H, d).permute(2, 0, 3, 1, 4)
    logits = (q * d**-0.5) @ k.transpose(-1, -2)  # (B, H, T+N, T+N)
    img = (q[:, :, T:] * d**-0.5) @ k[:, :, T:].transpose(-1, -2)
    img_rel = add_decomposed_rel_pos(img.reshape(B * H, h * w, h * w), q[:, :, T:].reshape(B * H, h * w, d),
                                     blk.attn.rel_pos_h, blk.attn.rel_pos_w, (h, w), (h, w))
    logits[:, :, T:, T:] = img_rel.reshape(B, H, h * w, h * w)  # rel-pos bias on image->image only
    if valid is not None:
        logits = logits.masked_fill(~torch.cat([valid, valid.new_ones(B, h * w)], 1)[:, None, None, :], -torch.inf)
    if vit.use_text_gate:  # image queries: separate softmaxes over image and text keys, gated sum
        o_img = logits[:, :, T:, T:].softmax(-1) @ v[:, :, T:]
        o_txt = logits[:, :, T:, :T].softmax(-1) @ v[:, :, :T]
        img_out = o_img + torch.tanh(vit.text_gate[i]).view(1, H, 1, 1) * o_txt
    else:
        img_out = logits[:, :, T:].softmax(-1) @ v
    txt_out = logits[:, :, :T].softmax(-1) @ v
    out = blk.attn.proj(torch.cat([txt_out, img_out], 2).transpose(1, 2).reshape(B, T + h * w, C))
    seq = torch.cat([text, x.reshape(B, h * w, C)], 1) + out
    seq = seq + blk.mlp(blk.norm2(seq))
    return seq[:, T:].reshape(B, h, w, C), seq[:, :T]


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_global_block_matches_naive_reference(gate: bool, masked: bool):
    vit = tiny(text_gate=gate, use_text_pad_mask=masked)
    x, text = torch.randn(2, 6, 5, 96), torch.randn(2, 7, 96)
    valid = torch.tensor([[True] * 7, [True] * 4 + [False] * 3])
    with torch.no_grad():
        got = vit._block(0, vit.blocks[0], x, text, vit._text_key_valid(valid))
        want = reference_block(vit, 0, x, text, valid if masked else None)
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def run(vit: TextAwareViT, images: torch.Tensor, text: torch.Tensor | None, mask: torch.Tensor | None = None):
    hook = None if text is None else (lambda i, prev: text)
    with torch.no_grad():
        return vit(images, text_hook=hook, text_mask=mask)


@pytest.mark.parametrize("global_all", [True, False])
def test_zero_gate_keeps_image_stream_exactly(global_all: bool):
    vit = tiny(global_all_blocks=global_all)
    with torch.no_grad():
        vit.text_gate.zero_()
    images, text = torch.randn(2, 3, 128, 128), torch.randn(2, 5, 96)
    assert torch.equal(run(vit, images, text), run(vit, images, None))
    with torch.no_grad():
        vit.text_gate.fill_(0.5)
    assert not torch.allclose(run(vit, images, text), run(vit, images, None))


@pytest.mark.parametrize("gate", [False, True])
def test_text_pad_mask_hides_padded_slots(gate: bool):
    images, text = torch.randn(1, 3, 128, 128), torch.randn(1, 6, 96)
    mask = torch.tensor([[True, True, True, False, False, False]])
    other = text.clone()
    other[:, 3:] = torch.randn(1, 3, 96)  # only padded slots change
    masked = tiny(text_gate=gate, use_text_pad_mask=True)
    torch.testing.assert_close(run(masked, images, text, mask), run(masked, images, other, mask))
    dit_like = tiny(text_gate=gate, use_text_pad_mask=False)  # DIT: pad slots take part in attention
    assert not torch.allclose(run(dit_like, images, text, mask), run(dit_like, images, other, mask))


def test_window_blocks_with_text_see_the_sentence_and_mask_windows():
    vit = tiny(global_all_blocks=False, text_gate=False)
    images, text = torch.randn(1, 3, 256, 256), torch.randn(1, 4, 96)  # 16x16 grid, 8x8 windows in blocks 0, 2
    out = run(vit, images, text)
    assert out.shape == (1, 256, 16, 16) and torch.isfinite(out).all()
    assert not torch.allclose(out, run(vit, images, None))  # the text reaches the image tokens
    # Block 0 alone: a change in one window leaves the other windows' image tokens untouched (window attention);
    # the text slots, which attend globally, do change.
    x = torch.randn(1, 16, 16, 96)
    y = x.clone()
    y[:, :8, :8] += torch.randn(1, 8, 8, 96)  # (a constant shift would vanish in norm1)
    with torch.no_grad():
        ax, tx = vit._block(0, vit.blocks[0], x, text, None)
        ay, ty = vit._block(0, vit.blocks[0], y, text, None)
    torch.testing.assert_close(ax[:, 8:, 8:], ay[:, 8:, 8:])
    assert not torch.allclose(tx, ty)


def test_bad_inputs_are_named():
    vit = tiny()
    with pytest.raises(ValueError, match="multiples of patch_size"):
        vit(torch.randn(1, 3, 120, 128))
    with pytest.raises(ValueError, match="text_hook"):
        vit(torch.randn(1, 3, 128, 128), text_hook=lambda i, prev: torch.zeros(1, 4, 32))


def test_conv_stem_replaces_the_patch_embedding():
    vit = TextAwareViT.from_preset("tiny", img_size=64, patch_size=8, embed_dim=32, depth=1, num_heads=2,
                                   conv_stem=True)
    strides = [m.stride[0] for m in vit.patch_embed.proj if isinstance(m, torch.nn.Conv2d)]
    assert strides == [2, 2, 2, 1]                       # log2(8) stride-2 convs, then the 1x1 projection
    assert vit(torch.randn(2, 3, 64, 64)).shape == (2, 256, 8, 8)
    assert "patch_embed." in vit.new_parameter_prefixes  # not SAM's: a checkpoint's patch_embed is not loaded
    with pytest.raises(ValueError, match="power-of-two"):
        TextAwareViT.from_preset("tiny", img_size=96, patch_size=12, embed_dim=32, depth=1, num_heads=2,
                                 conv_stem=True)
