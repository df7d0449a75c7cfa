"""SAM's mask decoder with one prompt set per image (refcoco-dit spec §2.6), and SAM's prompt-side builders.

``segment_anything``'s ``MaskDecoder.predict_masks`` is written for one image and many prompt sets: it
repeats the image embedding once per prompt row (``repeat_interleave``). With B images and B prompt sets it
builds B*B rows, and when the dense embedding has one row (what ``PromptEncoder`` returns without points,
boxes or masks) the addition broadcasts silently and every prompt is paired with every image.
:class:`BatchedMaskDecoder` overrides only ``predict_masks`` so that row b of the prompts pairs with image b;
the parameters are the parent's, under the parent's names, so official ``mask_decoder.*`` weights load as is.

``token_mask`` (not SAM's): padded prompt slots are left out of the attention whose keys are the tokens (the
tokens' self-attention and the image-to-token attention). SAM's prompts have no padding; DIT's 20 text slots are
mostly padding for a short expression, and every padded slot carries the same vector (the projection of zeros),
so without the mask they draw most of the image tokens' attention away from the words.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.transformer import Attention
from torch import Tensor

__all__ = ["BatchedMaskDecoder", "KeyMaskedAttention", "build_sam_mask_decoder", "build_sam_prompt_encoder"]


class KeyMaskedAttention(Attention):
    """SAM's ``Attention`` with an optional key mask (same parameters and names).

    ``key_mask`` (B, N_k) bool, True = attend, is set for the duration of one decoder call by
    :meth:`BatchedMaskDecoder.predict_masks`; None is SAM's attention exactly.
    """

    key_mask: Tensor | None = None

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.key_mask is None:
            return super().forward(q, k, v)
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self._separate_heads(self.v_proj(v), self.num_heads)
        attn = q @ k.permute(0, 1, 3, 2) / math.sqrt(q.shape[-1])  # (B, heads, N_q, N_k)
        attn = attn.masked_fill(~self.key_mask[:, None, None, :], float("-inf")).softmax(dim=-1)
        return self.out_proj(self._recombine_heads(attn @ v))


def _token_keyed(transformer: TwoWayTransformer) -> list[Attention]:
    """The attention modules of a two-way transformer whose keys are the tokens."""
    return [m for layer in transformer.layers for m in (layer.self_attn, layer.cross_attn_image_to_token)]


@contextlib.contextmanager
def _masked_token_keys(transformer: TwoWayTransformer, mask: Tensor | None) -> Iterator[None]:
    """Set ``mask`` on the token-keyed attentions (made :class:`KeyMaskedAttention` at construction) for one call."""
    modules = _token_keyed(transformer) if mask is not None else []
    for m in modules:
        m.key_mask = mask
    try:
        yield
    finally:
        for m in modules:
            m.key_mask = None


class BatchedMaskDecoder(MaskDecoder):
    """``MaskDecoder`` whose ``predict_masks`` pairs prompt row b with image b (no repeat of the image).

    Constructor arguments and ``forward`` are the parent's (``forward(image_embeddings, image_pe,
    sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output) -> (masks, iou_pred)``).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The attentions keyed by the tokens accept a key mask (``token_mask``); same parameters and names, and
        # without a mask their forward is SAM's.
        for m in _token_keyed(self.transformer):
            m.__class__ = KeyMaskedAttention

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse_prompt_embeddings: Tensor,
                      dense_prompt_embeddings: Tensor, highres: Tensor | None = None,
                      token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Masks and IoU predictions of every mask token.

        Args:
            image_embeddings: (B, C, h, w), or (1, C, h, w) shared by all B prompt sets.
            image_pe: (1 or B, C, h, w) positional encoding of the image grid.
            sparse_prompt_embeddings: (B, N, C) prompt tokens; row b belongs to image b.
            dense_prompt_embeddings: (1 or B, C, h, w), added to the image embedding.
            highres: optional (B, C/8, 4h, 4w) features added to the upscaled embedding before the per-token
                dot product (finer mask edges, as HQ-SAM adds early features there); None is SAM's decoder.
            token_mask: optional (B, N) bool, True on the real prompt tokens; padded ones are left out of the
                attention over the tokens (module docstring). None is SAM's decoder.

        Returns:
            masks (B, num_mask_tokens, 4h, 4w) logits and iou_pred (B, num_mask_tokens).
        """
        B = sparse_prompt_embeddings.shape[0]
        if image_embeddings.shape[0] not in (1, B):
            raise ValueError(f"BatchedMaskDecoder: {image_embeddings.shape[0]} image embeddings for {B} prompt "
                             "sets; expected one image per prompt set (or one image shared by all)")
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(B, -1, -1).to(sparse_prompt_embeddings.dtype)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = (image_embeddings + dense_prompt_embeddings).expand(B, -1, -1, -1)
        pos_src = image_pe.expand(B, -1, -1, -1)
        b, c, h, w = src.shape
        key_mask = None
        if token_mask is not None:
            key_mask = torch.cat([token_mask.new_ones(B, output_tokens.shape[1]), token_mask.bool()], dim=1)
        with _masked_token_keys(self.transformer, key_mask):
            hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1:1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))  # (B, C/8, 4h, 4w)
        if highres is not None:
            upscaled = upscaled + highres
        hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
                               dim=1)  # (B, num_mask_tokens, C/8)
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
        return masks, self.iou_prediction_head(iou_token_out)


def build_sam_mask_decoder(transformer_dim: int = 256, depth: int = 2, mlp_dim: int = 2048, num_heads: int = 8,
                           num_multimask_outputs: int = 3) -> BatchedMaskDecoder:
    """SAM's mask decoder (spec §4.2 arguments by default: 4,058,340 parameters), batched per image."""
    return BatchedMaskDecoder(
        num_multimask_outputs=num_multimask_outputs,
        transformer=TwoWayTransformer(depth=depth, embedding_dim=transformer_dim, mlp_dim=mlp_dim,
                                      num_heads=num_heads),
        transformer_dim=transformer_dim, iou_head_depth=3, iou_head_hidden_dim=256)


def build_sam_prompt_encoder(embed_dim: int = 256, mask_in_chans: int = 16) -> PromptEncoder:
    """SAM's prompt encoder (6,220 parameters). Its fixed 64x64 sizes are never used by DIT: the model
    evaluates ``pe_layer`` at the run-time grid and broadcasts ``no_mask_embed`` itself (spec §4.5)."""
    return PromptEncoder(embed_dim=embed_dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                         mask_in_chans=mask_in_chans)
