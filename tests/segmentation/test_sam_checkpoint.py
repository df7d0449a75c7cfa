"""Official-layout SAM checkpoints into E-DIT, L-DIT and the bare backbone, with the key report and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from grounding.backbone import SamCheckpointError, TextAwareViT, load_sam_weights
from grounding.text.encoder import TextEncoder
from segmentation import DIT


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_encoder() -> TextEncoder:
    return TextEncoder()


@pytest.fixture(scope="module")
def sam_vit_b(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """An official-layout vit_b file: segment_anything's own model (random init, no download), torch.save'd."""
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    state = sam_model_registry["vit_b"]().state_dict()
    assert len(state) == 314  # spec §4.3
    path = tmp_path_factory.mktemp("sam") / "sam_vit_b.pth"
    torch.save(state, path)
    return path, state


NEW_KEYS = ("text_inject.", "text_proj.", "image_encoder.text_gate")


@pytest.mark.parametrize(("mode", "edit_mode"), [("edit", "code"), ("ldit", "code"), ("edit", "paper")])
def test_official_vit_b_loads_with_only_new_modules_missing(sam_vit_b, text_encoder, mode, edit_mode):
    path, state = sam_vit_b
    torch.manual_seed(1)
    model = DIT(TextAwareViT.from_preset("vit_b"), text_encoder, mode=mode, edit_mode=edit_mode)
    report = model.load_sam(path)
    assert report.unexpected == [] and report.ignored == []
    assert len(report.loaded) == 314
    assert report.missing and all(k.startswith(NEW_KEYS) for k in report.missing)
    assert {k.split(".")[0] for k in report.missing} == {"text_inject", "text_proj", "image_encoder"}
    n_inject = 12 if edit_mode == "code" else 1
    assert sum(k.startswith("text_inject.layers.") for k in report.missing) == 2 * n_inject
    assert "text_inject.text_in.weight" in report.missing  # MiniLM 384 -> ViT-B 768
    own = model.state_dict()
    for key in ("image_encoder.pos_embed", "image_encoder.blocks.11.attn.rel_pos_h",
                "prompt_encoder.no_mask_embed.weight", "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                "mask_decoder.mask_tokens.weight"):
        assert torch.equal(own[key], state[key]), key


def test_backbone_alone_loads_the_image_encoder_part(sam_vit_b):
    path, state = sam_vit_b
    vit = TextAwareViT.from_preset("vit_b", text_gate=False)
    report = vit.load_sam(path)
    assert report.missing == [] and report.unexpected == []
    assert len(report.loaded) == sum(k.startswith("image_encoder.") for k in state)
    assert all(k.startswith(("prompt_encoder.", "mask_decoder.")) for k in report.ignored)
    assert torch.equal(vit.blocks[3].mlp.lin1.weight, state["image_encoder.blocks.3.mlp.lin1.weight"])


# ------------------------------------------------------------------ errors, on a tiny model
@pytest.fixture(scope="module")
def tiny_dit(text_encoder) -> DIT:
    torch.manual_seed(0)
    return DIT(TextAwareViT.from_preset("tiny"), text_encoder, mode="ldit")


def sam_layout(model: DIT) -> dict[str, torch.Tensor]:
    """The model's own SAM part under SAM's names (what an official file of that size would hold)."""
    return {k: v.clone() for k, v in model.state_dict().items()
            if k.startswith(("image_encoder.", "prompt_encoder.", "mask_decoder.")) and "text_gate" not in k}


def test_wrong_shape_raises_naming_key_and_shapes(tiny_dit):
    state = sam_layout(tiny_dit)
    before = tiny_dit.state_dict()["mask_decoder.iou_token.weight"].clone()
    state["mask_decoder.iou_token.weight"] = torch.ones(1, 255)
    state["image_encoder.blocks.1.attn.qkv.weight"] = torch.zeros(288, 95)
    with pytest.raises(SamCheckpointError) as err:
        tiny_dit.load_sam(state)
    msg = str(err.value)
    assert "image_encoder.blocks.1.attn.qkv.weight: checkpoint [288, 95] vs model [288, 96]" in msg
    assert "mask_decoder.iou_token.weight: checkpoint [1, 255] vs model [1, 256]" in msg
    assert torch.equal(tiny_dit.state_dict()["mask_decoder.iou_token.weight"], before)  # nothing loaded


def test_missing_pretrained_key_raises_unexpected_is_reported(tiny_dit):
    state = sam_layout(tiny_dit)
    del state["image_encoder.neck.0.weight"]
    with pytest.raises(SamCheckpointError, match=r"lacks 1 pretrained key.*image_encoder\.neck\.0\.weight"):
        tiny_dit.load_sam(state)
    state = sam_layout(tiny_dit)
    state["image_encoder.blocks.9.norm1.weight"] = torch.ones(96)  # a deeper checkpoint
    report = tiny_dit.load_sam(state)
    assert report.unexpected == ["image_encoder.blocks.9.norm1.weight"]
    with pytest.raises(SamCheckpointError, match="no place"):
        load_sam_weights(tiny_dit, state, new_prefixes=tiny_dit.new_parameter_prefixes,
                         skip_prefixes=("text_encoder.",), raise_on_unexpected=True)


def test_encoder_built_at_512_refuses_1024_weights_with_a_hint(sam_vit_b):
    # Only the image-encoder keys of the real file matter here; build the small-grid encoder on the meta device.
    _, state = sam_vit_b
    with torch.device("meta"):
        vit = TextAwareViT.from_preset("vit_b", img_size=512)
    with pytest.raises(SamCheckpointError, match=r"pos_embed: checkpoint \[1, 64, 64, 768\] vs model "
                                                 r"\[1, 32, 32, 768\].*img_size=1024"):
        vit.load_sam(state)


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(SamCheckpointError, match="broken.pth"):
        TextAwareViT.from_preset("tiny").load_sam(bad)


def test_load_pretrained_is_the_engine_hook(tiny_dit, text_encoder, tmp_path):
    assert tiny_dit.load_pretrained() is None  # no sam_checkpoint configured
    path = tmp_path / "tiny_sam.pth"
    torch.save(sam_layout(tiny_dit), path)
    torch.manual_seed(5)
    other = DIT(TextAwareViT.from_preset("tiny"), text_encoder, mode="edit", sam_checkpoint=str(path))
    report = other.load_pretrained()
    assert report.source == str(path) and report.unexpected == []
    assert torch.equal(other.image_encoder.neck[0].weight, tiny_dit.image_encoder.neck[0].weight)
