"""SAM's ViT image encoder that also carries text tokens: the common vision backbone (refcoco-dit spec §2.3).

:class:`TextAwareViT` *is* ``segment_anything.modeling.ImageEncoderViT`` (a subclass built through the
package's own constructor), so its parameters are exactly ``patch_embed.*``, ``pos_embed``,
``blocks.{i}.{norm1,attn.qkv,attn.proj,attn.rel_pos_h,attn.rel_pos_w,norm2,mlp.lin1,mlp.lin2}`` and
``neck.*``, and official SAM checkpoints load by their own key names (:mod:`grounding.backbone.checkpoint`).
Only ``forward`` is new; it reuses the package's modules and its ``get_rel_pos`` / window helpers:

1. patch embedding -> (B, h, w, C) channels-last grid; + ``pos_embed`` bicubically resized to (h, w) when
   the input is not ``img_size`` (the stored parameter keeps its pretrained 64x64 shape; DIT at 512 -> 32x32);
2. per block i: ``text_hook(i, previous_text)`` gives the text slots (B, T, C) (None: no text at all);
   attention over [text ; image] with the decomposed relative-position bias on the image->image part only;
   MLP on both; residuals as in SAM's ``Block``;
3. after the last block the text slots are dropped and the neck maps the grid to (B, out_chans, h, w).

Attention layout (``_attention``):
- image queries attend to image keys (the whole grid, or SAM's 14x14 windows when ``global_all_blocks`` is
  False and the block is a window block) plus every text key;
- text queries always attend globally to every text key and every image key (no positional bias: the text
  features carry their own positions), also in window blocks. So in window blocks each window sees the whole
  sentence and the sentence sees the whole image (an untested alternative to DIT's all-global layout, spec
  §2.3 toolkit rule); zero-padded window cells stay keys of their window, exactly as in SAM.
- ``use_text_pad_mask`` (default True) removes padded text slots from every key set; False reproduces DIT,
  where pad slots take part in attention.
- ``text_gate``: how text keys enter the image queries' attention.
  False: one softmax over [text ; image] keys (DIT's joint attention). Zero text slots are *not* inert then:
  LayerNorm maps a zero slot to ``norm1.bias``, so an image token already attends to extra keys at step 0.
  True (default): zero-initialised gated text attention (LLaMA-Adapter's "zero-init attention"): the image
  queries' output is ``Attn(q, K_img, V_img) + tanh(g[i, head]) * Attn(q, K_text, V_text)`` with two separate
  softmaxes and a per-block, per-head gate ``text_gate`` initialised to 0. At initialisation the image
  stream is bit-for-bit SAM's whatever the text slots hold; the gate gets a gradient from step 0 (the text
  branch output is non-zero) and can open in either direction, after which the injection layers train.

Compression schedule (token-compression spec §4.3, §4.6): ``compress`` (a
:class:`~grounding.backbone.compression.BackboneCompression`, from ``configs/compress/``) compresses the image tokens
at the input of its scheduled blocks; later blocks run on the TokenSet (gathered rel-pos, per-window packing,
proportional attention: :mod:`grounding.backbone.token_attention`) and the dense (h, w) grid is restored before
``self.neck``. Text slots are ``protect``ed. None (``compress=none``) runs the loop below unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT
from segment_anything.modeling.image_encoder import Block, get_rel_pos, window_partition, window_unpartition
from torch import Tensor, nn

from grounding.backbone.checkpoint import SamLoadReport, load_sam_weights
from grounding.backbone.compression import BackboneCompression, as_backbone_compression, forward_compressed

__all__ = ["SAM_VIT_PRESETS", "TextAwareViT", "TextHook"]

# text_hook(block_index, text_slots_output_by_previous_block or None) -> (B, T, C) text slots for this block.
TextHook = Callable[[int, Tensor | None], Tensor]

# Spec §4.2: what segment_anything's _build_sam passes for each variant (img_size 1024, patch 16, window 14,
# mlp_ratio 4, out_chans 256 for all); "tiny" is a CPU-test size with the same structure.
SAM_VIT_PRESETS: dict[str, dict[str, Any]] = {
    "vit_b": {"embed_dim": 768, "depth": 12, "num_heads": 12, "global_attn_indexes": (2, 5, 8, 11)},
    "vit_l": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "global_attn_indexes": (5, 11, 17, 23)},
    "vit_h": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "global_attn_indexes": (7, 15, 23, 31)},
    "tiny": {"img_size": 256, "embed_dim": 96, "depth": 4, "num_heads": 4, "window_size": 8,
             "global_attn_indexes": (1, 3)},
}


def conv_patch_stem(in_chans: int, embed_dim: int, patch_size: int) -> nn.Sequential:
    """(B, in_chans, H, W) -> (B, embed_dim, H / patch, W / patch) by stride-2 3x3 convolutions.

    Widths double from embed_dim / 2^(n-1) ... up to embed_dim / 2 over the n = log2(patch) stages, then a 1x1
    convolution to embed_dim. GroupNorm (not BatchNorm): batches of a few expressions per device.
    """
    stages = int(patch_size).bit_length() - 1
    if patch_size < 2 or 2 ** stages != patch_size:
        raise ValueError(f"conv_stem needs a power-of-two patch_size >= 2, got {patch_size}")
    layers: list[nn.Module] = []
    width_in = in_chans
    for k in range(stages):
        width = max(embed_dim // 2 ** (stages - k), 16)
        layers += [nn.Conv2d(width_in, width, 3, stride=2, padding=1, bias=False),
                   nn.GroupNorm(min(8, width), width), nn.GELU()]
        width_in = width
    layers.append(nn.Conv2d(width_in, embed_dim, 1))
    return nn.Sequential(*layers)


class TextAwareViT(ImageEncoderViT):
    """SAM ViT encoder whose blocks also attend over text slots (see the module docstring for the layout).

    Args:
        img_size: pretraining input side; sizes ``pos_embed`` (img_size / patch_size)^2 and the global
            blocks' rel-pos tables. Keep 1024 for official checkpoints; other inputs are resized at run time.
        patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, out_chans, window_size,
        global_attn_indexes: as ``ImageEncoderViT`` (SAM values in :data:`SAM_VIT_PRESETS`). LayerNorm
            eps 1e-6, qkv bias, absolute and relative positions on, as SAM builds them.
        global_all_blocks: every block attends globally (DIT, True); False keeps SAM's window blocks.
        use_text_pad_mask: padded text slots are never attended to (False reproduces DIT).
        text_gate: zero-initialised gated text attention for image queries (True) or DIT's joint softmax.
        conv_stem: replace the patch embedding's single ``patch x patch`` convolution by log2(patch) stride-2
            3x3 convolutions (GroupNorm, GELU) and a 1x1 projection ("early convolutions", Xiao et al. 2021):
            a ViT trained from scratch on little data learns edges and colour regions much sooner. Not SAM's
            (off for official weights: ``patch_embed.*`` is then a new module and SAM's is not loaded).
        compress: a :class:`~grounding.backbone.compression.BackboneCompression` schedule, or None /
            ``grounding.compress.Identity`` (``compress=none``): no compression, SAM's computation.
    """

    def __init__(self, img_size: int = 1024, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, out_chans: int = 256,
                 window_size: int = 14, global_attn_indexes: Sequence[int] = (2, 5, 8, 11),
                 global_all_blocks: bool = True, use_text_pad_mask: bool = True, text_gate: bool = True,
                 conv_stem: bool = False, compress: Any = None) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio, out_chans=out_chans,
                         qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
                         use_abs_pos=True, use_rel_pos=True, rel_pos_zero_init=True, window_size=window_size,
                         global_attn_indexes=tuple(global_attn_indexes))
        if embed_dim % num_heads:
            raise ValueError(f"TextAwareViT: embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.out_chans = out_chans
        self.num_heads = num_heads
        self.global_all_blocks = global_all_blocks
        self.use_text_pad_mask = use_text_pad_mask
        self.use_text_gate = text_gate
        if text_gate:
            self.text_gate = nn.Parameter(torch.zeros(depth, num_heads))
        else:
            self.register_parameter("text_gate", None)
        self.conv_stem = conv_stem
        if conv_stem:
            self.patch_embed.proj = conv_patch_stem(in_chans, embed_dim, patch_size)
        self.img_size = img_size
        self.compression: BackboneCompression | None = None
        self.set_compression(compress)

    def set_compression(self, compress: Any) -> None:
        """Install (or with None / ``Identity`` remove) a compression schedule; binds it to this encoder."""
        comp = as_backbone_compression(compress)
        if comp is not None:
            window = 0 if self.global_all_blocks else max((blk.window_size for blk in self.blocks), default=0)
            grid = (self.img_size // self.patch_size,) * 2
            comp.bind(self.embed_dim, len(self.blocks), window, grid)
        self.compression = comp

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TextAwareViT:
        """``vit_b`` / ``vit_l`` / ``vit_h`` (SAM's sizes) or ``tiny``; ``overrides`` replace any argument."""
        if name not in SAM_VIT_PRESETS:
            raise ValueError(f"unknown TextAwareViT preset {name!r}; expected one of {sorted(SAM_VIT_PRESETS)}")
        return cls(**{**SAM_VIT_PRESETS[name], **overrides})

    @property
    def new_parameter_prefixes(self) -> tuple[str, ...]:
        """State-dict keys this wrapper adds to SAM's encoder (absent from official checkpoints)."""
        return ((("text_gate",) if self.use_text_gate else ()) + (("patch_embed.",) if self.conv_stem else ())
                + (("compression.",) if self.compression is not None else ()))

    def load_sam(self, source: str | Mapping[str, Any]) -> SamLoadReport:
        """Load the ``image_encoder.*`` part of a full SAM checkpoint (path or state dict) by its own key names.

        Returns the :class:`~grounding.backbone.checkpoint.SamLoadReport`; see
        :func:`~grounding.backbone.checkpoint.load_sam_weights` for what raises.
        """
        return load_sam_weights(self, source, prefix_map={"image_encoder.": ""},
                                new_prefixes=self.new_parameter_prefixes)

    # ------------------------------------------------------------------ forward
    def pos_embed_at(self, hw: tuple[int, int]) -> Tensor:
        """(1, h, w, C) absolute position embedding for an (h, w) token grid.

        The stored ``pos_embed`` (1, H0, W0, C) is returned as is when (h, w) == (H0, W0), else resized
        bicubically (``align_corners=False``; DIT's setting is unconfirmed, spec §2.3).
        """
        pe = self.pos_embed
        if tuple(pe.shape[1:3]) == tuple(hw):
            return pe
        return F.interpolate(pe.permute(0, 3, 1, 2), size=tuple(hw), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1)

    def forward(self, images: Tensor, text_hook: TextHook | None = None, text_mask: Tensor | None = None) -> Tensor:
        """Encode images, optionally with text slots injected before every block.

        Args:
            images: (B, 3, H, W) float, SAM-normalised, H and W multiples of ``patch_size``.
            text_hook: called before block i with the text slots block i-1 produced (None before block 0);
                returns the (B, T, C) text slots block i attends with. None: image-only, SAM's computation.
            text_mask: (B, T) bool, True for real text slots (used when ``use_text_pad_mask``).

        Returns:
            (B, out_chans, H / patch, W / patch) image embedding (the neck output).
        """
        return self.neck(self.forward_tokens(images, text_hook, text_mask).permute(0, 3, 1, 2))

    def forward_tokens(self, images: Tensor, text_hook: TextHook | None = None,
                       text_mask: Tensor | None = None) -> Tensor:
        """Like :meth:`forward` but returns the last block's image tokens (B, h, w, C), before the neck."""
        if images.dim() != 4 or images.shape[-1] % self.patch_size or images.shape[-2] % self.patch_size:
            raise ValueError(f"TextAwareViT expects (B, {self.patch_embed.proj.in_channels}, H, W) images with H "
                             f"and W multiples of patch_size {self.patch_size}, got {tuple(images.shape)}")
        x = self.patch_embed(images)  # (B, h, w, C)
        x = x + self.pos_embed_at((x.shape[1], x.shape[2]))
        key_valid = self._text_key_valid(text_mask)
        if self.compression is not None:
            return forward_compressed(self, self.compression, x, text_hook, key_valid)
        text: Tensor | None = None
        for i, blk in enumerate(self.blocks):
            if text_hook is not None:
                text = self._checked_text(i, text_hook(i, text), x, key_valid)
            x, text = self._block(i, blk, x, text, key_valid)
        return x  # the text slots are dropped after the last block

    @staticmethod
    def _checked_text(i: int, text: Tensor, x: Tensor, key_valid: Tensor | None) -> Tensor:
        """``text_hook(i)``'s (B, T, C) slots, checked against the image tokens x (B, ..., C) and the mask."""
        if text.dim() != 3 or text.shape[0] != x.shape[0] or text.shape[2] != x.shape[-1]:
            raise ValueError(f"text_hook({i}) returned shape {tuple(text.shape)}; expected "
                             f"({x.shape[0]}, T, {x.shape[-1]})")
        if key_valid is not None and key_valid.shape[1] != text.shape[1]:
            raise ValueError(f"text_mask has {key_valid.shape[1]} slots, text_hook({i}) gave {text.shape[1]}")
        return text

    def _text_key_valid(self, text_mask: Tensor | None) -> Tensor | None:
        if text_mask is None or not self.use_text_pad_mask:
            return None
        valid = text_mask.bool()
        # A row without any real slot would give an all -inf softmax (NaN); let it see its (zero) slots.
        return valid | ~valid.any(dim=1, keepdim=True)

    def _block(self, i: int, blk: Block, x: Tensor, text: Tensor | None,
               key_valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """One pre-norm block on the image grid x (B, h, w, C) and the text slots (B, T, C)."""
        img_out, text_out = self._attention(i, blk, blk.norm1(x), None if text is None else blk.norm1(text),
                                            key_valid)
        x = x + img_out
        x = x + blk.mlp(blk.norm2(x))
        if text is not None:
            text = text + text_out
            text = text + blk.mlp(blk.norm2(text))
        return x, text

    @staticmethod
    def _rel_pos_bias(blk: Block, q: Tensor, hw: tuple[int, int]) -> Tensor:
        """Decomposed rel-pos bias (Bw, heads, n, n) for queries q (Bw, heads, n, d) on an (h, w) grid.

        Same terms as ``add_decomposed_rel_pos``: q . R_h[row_q - row_k] + q . R_w[col_q - col_k], from the
        unscaled q, tables resampled by ``get_rel_pos`` when the grid differs from the pretrained one.
        """
        h, w = hw
        rh = get_rel_pos(h, h, blk.attn.rel_pos_h)  # (h, h, d)
        rw = get_rel_pos(w, w, blk.attn.rel_pos_w)  # (w, w, d)
        r_q = q.reshape(*q.shape[:2], h, w, q.shape[-1])
        rel_h = torch.einsum("bnyxc,ykc->bnyxk", r_q, rh)
        rel_w = torch.einsum("bnyxc,xkc->bnyxk", r_q, rw)
        bias = rel_h[..., :, None] + rel_w[..., None, :]  # (Bw, heads, h, w, h, w)
        return bias.reshape(q.shape[0], q.shape[1], h * w, h * w).to(q.dtype)

    def _attention(self, i: int, blk: Block, x: Tensor, text: Tensor | None,
                   key_valid: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Attention of normed image grid x (B, h, w, C) and normed text (B, T, C); returns both outputs."""
        attn = blk.attn
        B, h, w, C = x.shape
        heads = attn.num_heads
        ws = 0 if self.global_all_blocks else blk.window_size
        xw, pad_hw = window_partition(x, ws) if ws > 0 else (x, (h, w))
        Bw, gh, gw, _ = xw.shape
        n_win = Bw // B
        qkv = attn.qkv(xw)  # (Bw, gh, gw, 3C); padded window cells are keys, as in SAM
        q, k, v = qkv.reshape(Bw, gh * gw, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (Bw, heads, n, d)
        bias = self._rel_pos_bias(blk, q, (gh, gw)) if attn.use_rel_pos else None

        text_out = None
        if text is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            T = text.shape[1]
            tq, tk, tv = attn.qkv(text).reshape(B, T, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            # (B, 1, 1, T) additive key mask: 0 for real slots, -inf for padding.
            tbias = None
            if key_valid is not None:
                tbias = torch.zeros(B, 1, 1, T, dtype=q.dtype, device=q.device)
                tbias = tbias.masked_fill(~key_valid[:, None, None, :], float("-inf"))
            tk_w, tv_w = tk.repeat_interleave(n_win, 0), tv.repeat_interleave(n_win, 0)
            tbias_w = None if tbias is None else tbias.repeat_interleave(n_win, 0)
            if self.use_text_gate:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
                text_part = F.scaled_dot_product_attention(q, tk_w, tv_w, attn_mask=tbias_w)
                out = out + torch.tanh(self.text_gate[i]).to(out.dtype).view(1, heads, 1, 1) * text_part
            else:
                n = gh * gw
                left = (tbias_w if tbias_w is not None else q.new_zeros(1, 1, 1, T)).expand(Bw, heads, n, T)
                right = bias if bias is not None else q.new_zeros(Bw, heads, n, n)
                out = F.scaled_dot_product_attention(q, torch.cat([tk_w, k], 2), torch.cat([tv_w, v], 2),
                                                     attn_mask=torch.cat([left, right], -1))
            # Text queries: global over [text ; every real image token] (windows undone, padding cropped).
            grid = window_unpartition(qkv, ws, pad_hw, (h, w)) if ws > 0 else qkv
            _, ik, iv = grid.reshape(B, h * w, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            tmask = None if tbias is None else F.pad(tbias, (0, h * w))
            to = F.scaled_dot_product_attention(tq, torch.cat([tk, ik], 2), torch.cat([tv, iv], 2), attn_mask=tmask)
            text_out = attn.proj(to.transpose(1, 2).reshape(B, T, C))

        out = attn.proj(out.transpose(1, 2).reshape(Bw, gh, gw, C))
        if ws > 0:
            out = window_unpartition(out, ws, pad_hw, (h, w))
        return out, text_out
