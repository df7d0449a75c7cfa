"""``BoxRetriever``: REC by box retrieval, ChatRex-style (box-retrieval spec §1, §4): the language side does not
regress coordinates, it picks the index of the referred box among candidates.

Pipeline for a :class:`datasets.batch_boxes.RetrievalBatch` of I images and Q queries:
1. the common vision backbone (:class:`~grounding.backbone.sam_vit.TextAwareViT`, image only, no text: one
   encoding per image serves all its queries) -> (I, C, h, w) neck map;
2. :class:`~grounding.retrieval.box_tokens.SimplePyramid` -> levels; :class:`~grounding.retrieval.box_tokens.
   BoxTokenizer` -> (I, N, d) box tokens (RoI-align on every level + sine embedding of the normalised box);
3. the shared :class:`~grounding.text.encoder.TextEncoder` (frozen MiniLM with its cache by default) -> (Q, L, C_t)
   token features, projected to d;
4. :class:`~grounding.retrieval.head.RetrievalHead` over [text ; boxes of the query's image] -> (Q, N) logits.
No loss here (:mod:`grounding.retrieval.criterion`), no decoding (:mod:`grounding.retrieval.postprocess`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from datasets.batch_boxes import RetrievalBatch
from grounding.backbone.checkpoint import SamLoadReport
from grounding.backbone.sam_vit import TextAwareViT
from grounding.backbone.spatial_prior import SpatialPrior
from grounding.retrieval.box_tokens import BoxTokenizer, SimplePyramid, level_strides
from grounding.retrieval.head import RetrievalHead
from grounding.text.encoder import TextEncoder

__all__ = ["BoxRetriever", "RetrievalOutputs"]


@dataclass
class RetrievalOutputs:
    """Raw outputs for Q queries over N (padded) candidates.

    Attributes:
        logits: (Q, N) float candidate scores; -inf at padded candidates.
        valid: (Q, N) bool, the real candidates of each query's image.
        no_target_logits: (Q,) logit of the "no target" answer, or None when the head has none.
    """

    logits: Tensor
    valid: Tensor
    no_target_logits: Tensor | None = None


class BoxRetriever(nn.Module):
    """Backbone + box tokens + text + retrieval head; ``forward(batch) -> RetrievalOutputs``.

    Args:
        backbone: the common vision backbone (SAM's ViT); its ``out_chans`` neck map is the pyramid's input.
        text_encoder: the shared text encoder (frozen by default).
        head: the retrieval head; its ``d_model`` sizes the box tokens and the text projection.
        pyramid_scales: ViTDet simple-pyramid levels (factors of the neck map's resolution, from {4, 2, 1, 0.5}).
        pyramid_dim: channels of each level (None: the backbone's ``out_chans``).
        roi_size, roi_pool, box_embedding: of the :class:`BoxTokenizer`.
        spatial_prior: width ``c`` of a convolutional branch on the image (ViT-Adapter's spatial prior module,
            :class:`~grounding.backbone.spatial_prior.SpatialPrior`) whose stride-matched maps are added to the
            pyramid levels; None (default): the pyramid alone. Trained from scratch in either case.
        freeze_backbone: no gradients through the backbone, which stays in eval mode (spec §4.6: the first runs
            on real data keep SAM frozen).
        backbone_lr_scale: learning-rate factor of the backbone's parameter group (fine-tuning pretrained SAM).
        sam_checkpoint: official SAM file that :meth:`load_pretrained` loads into the backbone (the engine calls
            it after construction); None: the backbone starts as built (random).
    """

    def __init__(self, backbone: TextAwareViT, text_encoder: TextEncoder, head: RetrievalHead,
                 pyramid_scales: Sequence[float] = (2.0, 1.0, 0.5), pyramid_dim: int | None = None,
                 roi_size: int = 7, roi_pool: str = "mean", box_embedding: bool = True, freeze_backbone: bool = False,
                 backbone_lr_scale: float = 1.0, sam_checkpoint: str | None = None,
                 spatial_prior: int | None = None) -> None:
        super().__init__()
        self.backbone, self.text_encoder, self.head = backbone, text_encoder, head
        dim = int(pyramid_dim or backbone.out_chans)
        self.pyramid = SimplePyramid(backbone.out_chans, dim, pyramid_scales)
        strides = [backbone.patch_size / s for s in self.pyramid.scales]
        self.spatial_prior = None if spatial_prior is None else SpatialPrior(strides, dim, int(spatial_prior))
        self.box_tokens = BoxTokenizer(dim, len(self.pyramid.scales), head.d_model, roi_size, roi_pool,
                                       box_embedding)
        self.text_proj = nn.Linear(text_encoder.dim, head.d_model)
        self.freeze_backbone, self.backbone_lr_scale = freeze_backbone, backbone_lr_scale
        self.sam_checkpoint = sam_checkpoint
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)

    # ------------------------------------------------------------------ engine hooks
    def train(self, mode: bool = True) -> BoxRetriever:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.train(False)
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """The backbone at ``backbone_lr_scale``; everything else at the base rate (the engine adds the rest)."""
        return [{"params": list(self.backbone.parameters()), "lr_scale": self.backbone_lr_scale, "name": "backbone"}]

    def load_sam(self, source: str | Mapping[str, Any]) -> SamLoadReport:
        """Load the ``image_encoder.*`` weights of an official SAM checkpoint into the backbone."""
        return self.backbone.load_sam(source)

    def load_pretrained(self) -> SamLoadReport | None:
        """Load ``sam_checkpoint`` (the engine's hook after construction); None without one."""
        return None if self.sam_checkpoint is None else self.load_sam(self.sam_checkpoint)

    # ------------------------------------------------------------------ forward
    def encode_images(self, images: Tensor) -> list[Tensor]:
        """(I, 3, S, S) canvas images -> the pyramid levels, each (I, dim, h_l, w_l)."""
        if self.freeze_backbone:
            with torch.no_grad():
                feats = self.backbone(images)
        else:
            feats = self.backbone(images)
        levels = self.pyramid(feats)
        return levels if self.spatial_prior is None else self.spatial_prior.add_to(levels, images)

    def encode_boxes(self, batch: RetrievalBatch) -> Tensor:
        """(I, N, d) box tokens of the batch's candidates."""
        levels = self.encode_images(batch.images)
        strides = level_strides(int(batch.images.shape[-1]), levels)
        return self.box_tokens(levels, strides, batch.canvas_boxes(), batch.normalised_boxes())

    def encode_text(self, texts: Sequence[str], device: torch.device) -> tuple[Tensor, Tensor]:
        """(Q, L, d) projected token features and (Q, L) bool mask (True = real token)."""
        feats = self.text_encoder(list(texts))
        tokens, mask = feats.tokens.to(device), feats.token_mask.to(device)
        return self.text_proj(tokens) * mask[..., None].to(tokens.dtype), mask

    def forward(self, batch: RetrievalBatch) -> RetrievalOutputs:
        """Logits of every query over the candidates of its image (see :class:`RetrievalOutputs`)."""
        boxes = self.encode_boxes(batch)
        text, text_mask = self.encode_text(batch.texts, boxes.device)
        q = batch.query_image
        valid = batch.box_valid[q]
        logits, no_target = self.head(text, text_mask, boxes[q], valid)
        return RetrievalOutputs(logits=logits, valid=valid, no_target_logits=no_target)
