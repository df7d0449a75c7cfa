"""DIT: deep instruction tuning of SAM for referring image segmentation; E-DIT and L-DIT as one module.

Pipeline (refcoco-dit spec §2.1-§2.5), B expressions on a canvas of side S:
1. the text encoder gives token features (B, L, C_text); they are cut or zero-padded to ``text_slots`` (T)
   slots with a (B, T) validity mask (``zero_text`` replaces the features by zeros: the "model must use the
   words" ablation);
2. :class:`TextInjection` turns them into the text slots of every ViT block (E-DIT / L-DIT, below) and
   :class:`~grounding.backbone.sam_vit.TextAwareViT` encodes the image with them -> (B, 256, S/16, S/16);
3. SAM's mask decoder (:class:`~segmentation.mask_decoder.BatchedMaskDecoder`) is prompted with
   ``text_proj`` (C_text -> 256) of the T slots as sparse prompts, ``no_mask_embed`` broadcast over the
   grid as the dense prompt and SAM's random-Fourier PE evaluated at the run-time grid; mask token 0;
4. the (B, S/4, S/4) logits are upsampled bilinearly to the (B, S, S) canvas.

Text injection (spec §2.4). ``text_in`` maps C_text to the encoder width when they differ (the ViT-H note:
Linear(768, 1280) first; identity when equal, e.g. BERT-base into ViT-B), then zero-initialised
Linear(C, C) + Dropout(0.1) layers write the slots before block i:
- ``ldit``: slots_i = Drop(inject_i(text_in(t))) for every block (fresh projection, previous slots discarded);
- ``edit`` / ``edit_mode="code"`` (released code): slots_0 = Drop(inject_0(text_in(t))),
  slots_i = Drop(inject_i(slots output by block i-1)); one Linear per block;
- ``edit`` / ``edit_mode="paper"`` (the paper's description): slots_0 = Drop(inject_0(text_in(t))), then the
  slots output by block i-1 enter block i unchanged; a single Linear.

Step-0 equivalence: with zero-initialised injection the slots are exactly zero, but zero slots are not inert
under DIT's joint softmax (LayerNorm maps them to ``norm1.bias``, spec §2.4). The toolkit default is the
encoder's zero-initialised text gate (``TextAwareViT(text_gate=True)``), which keeps the image stream
exactly SAM's at initialisation; ``text_gate=False`` reproduces DIT's joint attention and its step-0 drift.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, PromptEncoder
from torch import Tensor, nn

from datasets.batch2d import ReferBatch2D
from grounding.backbone.checkpoint import SamLoadReport, load_sam_weights
from grounding.backbone.sam_vit import TextAwareViT, TextHook
from grounding.backbone.spatial_prior import SpatialPrior
from grounding.text.encoder import TextEncoder
from grounding.text.parser import DependencyParser, Parse, lru_lookup
from grounding.text.roles import NUM_ROLES, PAD, referring_roles
from segmentation.attribute_prior import AttributePrior
from segmentation.fusion import WordPixelFusion
from segmentation.mask_decoder import build_sam_mask_decoder, build_sam_prompt_encoder

__all__ = ["DIT", "DITOutputs", "TextInjection"]

MODES = ("ldit", "edit")
EDIT_MODES = ("code", "paper")
# Initial scale of the role embedding: about the per-element spread of MiniLM's word features (0.45), so that at
# step 0 a word's role is as visible in its slot as the word itself.
ROLE_INIT_STD = 0.5
# Parts of SAM's prompt encoder / decoder that never reach DIT's loss (points, boxes, mask input, the IoU head,
# the multimask hypernetworks). They load from checkpoints but stay frozen, so every trainable parameter gets a
# gradient (DDP without find_unused_parameters; the released code needed it).
_UNUSED_SAM_PREFIXES = ("prompt_encoder.point_embeddings.", "prompt_encoder.not_a_point_embed.",
                        "prompt_encoder.mask_downscaling.", "mask_decoder.iou_prediction_head.",
                        "mask_decoder.output_hypernetworks_mlps.1.", "mask_decoder.output_hypernetworks_mlps.2.",
                        "mask_decoder.output_hypernetworks_mlps.3.")


@dataclass
class DITOutputs:
    """Raw model outputs.

    Attributes:
        pred_logits: (B, S, S) mask logits on the canvas (pixels, origin top-left, padding included).
        low_res_logits: (B, S/4, S/4) logits of mask token 0 as the decoder produced them.
        iou_pred: (B,) SAM's IoU-head output for mask token 0 (not trained by DIT; reported only).
        attr_logits: one (B, n_k, S/p, S/p) map per attribute kind on the image encoder's grid, from
            ``attribute_classes`` (empty without it).
        attr_text_logits: one (B, n_k) vector per attribute kind: the values the sentence gives its referent
            (``attribute_prior``; empty without it).
    """

    pred_logits: Tensor
    low_res_logits: Tensor
    iou_pred: Tensor
    attr_logits: tuple[Tensor, ...] = ()
    attr_text_logits: tuple[Tensor, ...] = ()


class TextInjection(nn.Module):
    """Per-block text slots from text features (see the module docstring for the three schedules).

    Args:
        text_dim: C_text of the text features.
        vit_dim: C of the encoder.
        depth: number of encoder blocks.
        mode: ``"ldit"`` or ``"edit"``.
        edit_mode: ``"code"`` or ``"paper"`` (E-DIT only).
        dropout: after every injection Linear (0.1).
        zero_init: zero-initialise the injection Linears (DIT). With the encoder's zero-initialised text gate the
            model already starts as SAM, and zero injection as well makes gate and injection a product of two zeros:
            at step 0 the injection gets no gradient and the gate only sees sentence-independent slots, so the
            text enters the encoder slowly. False gives the Linears PyTorch's default initialisation.
    """

    def __init__(self, text_dim: int, vit_dim: int, depth: int, mode: str = "ldit", edit_mode: str = "code",
                 dropout: float = 0.1, zero_init: bool = True) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"DIT mode must be one of {MODES}, got {mode!r}")
        if edit_mode not in EDIT_MODES:
            raise ValueError(f"DIT edit_mode must be one of {EDIT_MODES}, got {edit_mode!r}")
        self.mode, self.edit_mode, self.depth = mode, edit_mode, depth
        self.text_in = nn.Identity() if text_dim == vit_dim else nn.Linear(text_dim, vit_dim)
        n = 1 if (mode == "edit" and edit_mode == "paper") else depth
        self.layers = nn.ModuleList(nn.Linear(vit_dim, vit_dim) for _ in range(n))
        for layer in self.layers if zero_init else ():  # zero init: no text signal at step 0 (spec §2.4)
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.dropout = nn.Dropout(dropout)

    def hook(self, text: Tensor) -> TextHook:
        """The encoder's ``text_hook`` for text features (B, T, C_text)."""
        base = self.text_in(text)

        def slots(i: int, previous: Tensor | None) -> Tensor:
            if i == 0 or self.mode == "ldit":
                return self.dropout(self.layers[i](base))
            if self.edit_mode == "code":
                return self.dropout(self.layers[i](previous))
            return previous  # paper E-DIT: propagate the block outputs unchanged

        return slots


class DIT(nn.Module):
    """SAM + deep instruction tuning; ``forward(batch) -> DITOutputs``.

    Args:
        image_encoder: the :class:`TextAwareViT` (built at img_size 1024 for official weights).
        text_encoder: the :class:`TextEncoder` (MiniLM by default; BERT layer 1 for DIT parity).
        mode: ``"ldit"`` (layer-wise, default) or ``"edit"`` (end-to-end).
        edit_mode: ``"code"`` (released code, default) or ``"paper"`` (single input projection), E-DIT only.
        text_slots: T, text tokens kept per expression (20 in DIT); longer inputs are cut (set the text
            encoder's ``max_length`` to T to keep the closing special token), shorter ones zero-padded.
        dropout: after each injection Linear.
        zero_text: feed zeros instead of the text features (to both injection and decoder prompts).
        prompt_encoder, mask_decoder: SAM's modules; None builds the standard ones (spec §4.2).
        align_corners: of the x4 bilinear upsampling to the canvas; False (like SAM's postprocessing),
            True reproduces DIT's ``UpsamplingBilinear2d``.
        sam_checkpoint: official SAM file that :meth:`load_pretrained` loads (the engine calls it after
            building the model; never loaded in ``__init__``). None: start from scratch.
        pixel_branch: add features computed from the canvas pixels (two 3x3 convolutions, the first of stride 2,
            the last zero-initialised) to the decoder's upscaled embedding at 1/2 of the canvas, before the mask
            token's dot product, like HQ-SAM's early-feature fusion: mask edges finer than the ViT's patches.
            Not DIT's (False); with zero init the model starts as without it.
        zero_init_injection: see :class:`TextInjection` ``zero_init`` (DIT: True).
        spatial_prior: width of ViT-Adapter's convolutional spatial prior
            (:class:`~grounding.backbone.spatial_prior.SpatialPrior`) on the canvas pixels, whose stride-``patch``
            map is added to the image embedding before the mask decoder: local colour and shape evidence for the
            decoder's text-to-image attention, which a ViT trained from scratch has not learnt yet. None (default):
            DIT's decoder input. Zero-initialised projection when ``sam_checkpoint`` is set (SAM's start kept).
        decoder_pad_mask: leave the padded text slots out of the mask decoder's attention over its tokens
            (:class:`~segmentation.mask_decoder.BatchedMaskDecoder` ``token_mask``). False (default): DIT's decoder,
            where every slot takes part.
        text_roles: the text slots are the expression's *words* (the dependency parser's, sub-words mean-pooled by
            the text encoder) plus a learned embedding of each word's role: the referent's own phrase, a relation
            word or the locating context (:func:`~grounding.text.roles.referring_roles`). In "the yellow cup below
            the purple circle" the two colours then differ by more than their place in the sentence. Not DIT's
            (False: sub-word tokens, special tokens included, no roles); parses are cached by text.
        parse_cache_size: entries of that parse cache.
        pixel_word_fusion: LAVT's pixel-word attention with multiplicative fusion
            (:class:`~segmentation.fusion.WordPixelFusion`) on the image embedding before the mask decoder. Not
            DIT's (False); zero-initialised output when ``sam_checkpoint`` is set.
        attribute_classes: classes per attribute kind (background included) of a linear (1x1) head on the image
            encoder's output, trained against ``batch.attr_maps`` (every object's category, colour, size:
            :mod:`datasets.object_maps`) by the criterion's ``loss_attr``: a dense signal of what the objects
            are, which the referring mask gives only for one object per expression. Not DIT's (None); its
            output feeds the loss only (and the prior, with ``attribute_prior``), never the masks by itself.
        attribute_prior: add :class:`~segmentation.attribute_prior.AttributePrior`'s map (how well each pixel's
            object matches the attributes the sentence gives its referent) to the image embedding before the
            decoder; needs ``attribute_classes``. Not DIT's (False); zero-initialised when ``sam_checkpoint`` is set.
    """

    def __init__(self, image_encoder: TextAwareViT, text_encoder: TextEncoder, mode: str = "ldit",
                 edit_mode: str = "code", text_slots: int = 20, dropout: float = 0.1, zero_text: bool = False,
                 prompt_encoder: PromptEncoder | None = None, mask_decoder: MaskDecoder | None = None,
                 align_corners: bool = False, sam_checkpoint: str | None = None, pixel_branch: bool = False,
                 zero_init_injection: bool = True, spatial_prior: int | None = None,
                 decoder_pad_mask: bool = False, text_roles: bool = False,
                 parse_cache_size: int = 200_000, pixel_word_fusion: bool = False,
                 attribute_classes: Sequence[int] | None = None, attribute_prior: bool = False) -> None:
        super().__init__()
        if text_slots < 1:
            raise ValueError(f"DIT.text_slots must be >= 1, got {text_slots}")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.prompt_encoder = prompt_encoder if prompt_encoder is not None else build_sam_prompt_encoder()
        self.mask_decoder = mask_decoder if mask_decoder is not None else build_sam_mask_decoder()
        decoder_dim = self.mask_decoder.transformer_dim
        if image_encoder.out_chans != decoder_dim or self.prompt_encoder.embed_dim != decoder_dim:
            raise ValueError(f"DIT: image encoder out_chans {image_encoder.out_chans}, prompt encoder width "
                             f"{self.prompt_encoder.embed_dim} and mask decoder width {decoder_dim} must agree")
        text_dim = text_encoder.dim
        self.text_inject = TextInjection(text_dim, image_encoder.embed_dim, len(image_encoder.blocks), mode,
                                         edit_mode, dropout, zero_init=zero_init_injection)
        self.text_proj = nn.Linear(text_dim, decoder_dim)  # default init, as in DIT
        self.mode, self.edit_mode = mode, edit_mode
        self.text_slots = text_slots
        self.zero_text = zero_text
        self.align_corners = align_corners
        self.decoder_pad_mask = decoder_pad_mask
        self.sam_checkpoint = sam_checkpoint
        self.pixel_branch = None
        if pixel_branch:
            width = decoder_dim // 8  # the channels of SAM's upscaled embedding
            self.pixel_branch = nn.Sequential(nn.Conv2d(3, 2 * width, 3, stride=2, padding=1), nn.GELU(),
                                              nn.Conv2d(2 * width, width, 3, padding=1))
            nn.init.zeros_(self.pixel_branch[-1].weight)
            nn.init.zeros_(self.pixel_branch[-1].bias)
        self.spatial_prior = None
        if spatial_prior is not None:
            self.spatial_prior = SpatialPrior([float(image_encoder.patch_size)], decoder_dim, int(spatial_prior),
                                              zero_init=sam_checkpoint is not None)
        self.fusion = None
        if pixel_word_fusion:
            self.fusion = WordPixelFusion(decoder_dim, text_dim, zero_init=sam_checkpoint is not None)
        self.attribute_classes = tuple(int(n) for n in attribute_classes or ())
        if any(n < 2 for n in self.attribute_classes):
            raise ValueError(f"DIT.attribute_classes must be >= 2 per kind (background included), got "
                             f"{list(self.attribute_classes)}")
        self.attribute_head = None
        if self.attribute_classes:
            self.attribute_head = nn.Conv2d(decoder_dim, sum(self.attribute_classes), 1)
        if attribute_prior and not self.attribute_classes:
            raise ValueError("DIT.attribute_prior needs attribute_classes (the per-pixel attribute head)")
        self.attribute_prior = None
        if attribute_prior:
            self.attribute_prior = AttributePrior(self.attribute_classes, text_dim, decoder_dim,
                                                  zero_init=sam_checkpoint is not None)
        self.role_embed = None
        if text_roles:
            self.role_embed = nn.Embedding(NUM_ROLES, text_dim, padding_idx=PAD)
            nn.init.normal_(self.role_embed.weight, std=ROLE_INIT_STD)
            with torch.no_grad():
                self.role_embed.weight[PAD].zero_()
            self.parser = DependencyParser()
            self.parse_cache_size = parse_cache_size
            self._parses: OrderedDict[str, Parse] = OrderedDict()
        for name, p in self.named_parameters():
            if name.startswith(_UNUSED_SAM_PREFIXES):
                p.requires_grad_(False)

    @property
    def new_parameter_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the modules DIT adds to SAM (absent from official checkpoints)."""
        return ("text_inject.", "text_proj.", "pixel_branch.", "spatial_prior.", "role_embed.", "fusion.",
                "attribute_head.", "attribute_prior.",
                *(f"image_encoder.{p}" for p in self.image_encoder.new_parameter_prefixes))

    def load_sam(self, source: str | Mapping[str, Any]) -> SamLoadReport:
        """Load an official SAM checkpoint (path or full state dict) by SAM's key names.

        Only :attr:`new_parameter_prefixes` may be missing; the text encoder is out of scope (pretrained on its
        own). Raises :class:`~grounding.backbone.checkpoint.SamCheckpointError` on a shape mismatch or any other
        missing key (see :func:`~grounding.backbone.checkpoint.load_sam_weights`).
        """
        return load_sam_weights(self, source, new_prefixes=self.new_parameter_prefixes,
                                skip_prefixes=("text_encoder.",))

    def load_pretrained(self) -> SamLoadReport | None:
        """Load ``sam_checkpoint`` with :meth:`load_sam` (the engine's hook after construction); None without one."""
        return None if self.sam_checkpoint is None else self.load_sam(self.sam_checkpoint)

    # ------------------------------------------------------------------ forward
    def encode_text(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """Text features cut / padded to T slots: (B, T, C_text) float and (B, T) bool (True = real token).

        Sub-word tokens (special tokens included), or with ``text_roles`` the parsed words plus their role
        embeddings.
        """
        if self.role_embed is None:
            feats = self.text_encoder(list(texts))
            tokens, mask = feats.tokens.to(device), feats.token_mask.to(device)
        else:
            tokens, mask = self._words_with_roles(texts, device)
        T = self.text_slots
        tokens, mask = tokens[:, :T], mask[:, :T]
        if tokens.shape[1] < T:
            pad = T - tokens.shape[1]
            tokens = F.pad(tokens, (0, 0, 0, pad))
            mask = F.pad(mask, (0, pad), value=False)
        tokens = tokens * mask[..., None].to(tokens.dtype)  # padded slots hold zeros whatever the encoder wrote
        if self.zero_text:
            tokens = torch.zeros_like(tokens)
        return tokens, mask

    def _words_with_roles(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """(B, W, C_text) word features plus role embeddings, and the (B, W) word mask."""
        parses = lru_lookup(self._parses, list(texts), self.parser.parse_many, self.parse_cache_size)
        feats = self.text_encoder([p.words for p in parses])
        words, mask = feats.words.to(device), feats.word_mask.to(device)
        roles = torch.full(mask.shape, PAD, dtype=torch.long)
        for b, parse in enumerate(parses):
            r = referring_roles(parse)[: mask.shape[1]]
            roles[b, : len(r)] = torch.tensor(r, dtype=torch.long)
        roles = roles.to(device).masked_fill(~mask, PAD)  # words cut by the encoder's max_length have no role
        return words + self.role_embed(roles), mask

    def forward(self, batch: ReferBatch2D) -> DITOutputs:
        """Canvas logits for every expression of the batch (see :class:`DITOutputs` for shapes)."""
        images = batch.images
        B, _, S_h, S_w = images.shape
        text, text_mask = self.encode_text(batch.texts, images.device)
        embedding = self.image_encoder(images, text_hook=self.text_inject.hook(text), text_mask=text_mask)
        h, w = embedding.shape[-2:]
        attr, attr_text = (), ()
        if self.attribute_head is not None:  # what the objects are, read before any decoder-side text fusion
            attr = tuple(self.attribute_head(embedding).split(self.attribute_classes, dim=1))
        if self.attribute_prior is not None:
            attr_text = self.attribute_prior.text_logits(text, text_mask)
            embedding = embedding + self.attribute_prior(attr, attr_text)
        if self.spatial_prior is not None:
            embedding = self.spatial_prior.add_to([embedding], images)[0]
        if self.fusion is not None:
            embedding = self.fusion(embedding, text, text_mask)
        image_pe = self.prompt_encoder.pe_layer((h, w)).unsqueeze(0)  # (1, 256, h, w) at the run-time grid
        dense = self.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(B, -1, h, w)
        highres = None
        if self.pixel_branch is not None:
            highres = self.pixel_branch(images)
            size = (4 * h, 4 * w)  # the decoder's upscaled grid; the canvas / 2 when patch_size is 8
            if highres.shape[-2:] != size:
                highres = F.interpolate(highres, size=size, mode="bilinear", align_corners=False)
        token_mask = text_mask if self.decoder_pad_mask else None
        masks, iou = self.mask_decoder.predict_masks(embedding, image_pe, self.text_proj(text), dense, highres,
                                                     token_mask=token_mask)
        low = masks[:, 0]  # mask token 0: SAM's single-mask output (multimask_output=False)
        iou = iou[:, :1]
        pred = F.interpolate(masks[:, :1], size=(S_h, S_w), mode="bilinear", align_corners=self.align_corners)
        return DITOutputs(pred_logits=pred[:, 0], low_res_logits=low, iou_pred=iou[:, 0], attr_logits=attr,
                          attr_text_logits=attr_text)
