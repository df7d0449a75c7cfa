"""One SAM ViT block on a compressed :class:`~grounding.tokens.TokenSet` (token-compression spec §4.6).

After a compressor has merged or pruned image tokens, the grid is gone: the tokens are a (B, N, C) set with
each token's base-grid cell in ``pos`` (row, col), its window in ``window_id`` and its ``size``. A block then
runs as follows (:func:`token_block`):

- **relative positions** are *gathered*, never recomputed on a grid: per head Q_h = q · R_hᵀ (N × (2S − 1))
  and Q_w likewise, then bias[q, k] = Q_h[q, row_q − row_k + S − 1] + Q_w[q, col_q − col_k + S − 1]
  (:func:`gathered_rel_pos_bias`). The tables are SAM's ``get_rel_pos`` resamplings (:func:`rel_table`), the
  bias uses the unscaled q, exactly as ``add_decomposed_rel_pos``. A merged token sits on its destination's cell;
- **windowed blocks** pack the tokens per ``window_id`` (:func:`~grounding.compress.group_layout`): a query
  only ever sees keys of its own window. SAM's zero-padded border cells are keys in pretrained SAM (k, v = the
  qkv bias, no mask); they are kept, folded into **one** extra key per window whose logit carries the
  log-sum-exp of their rel-pos biases (all pad cells share k and v, so this is exact, and costs 1 key instead
  of up to 132 at 1024 px);
- **key bias**: log(size) of every key (ToMe's proportional attention, when ``proportional``) and a mask on
  invalid keys (padding between samples, tokens dropped or merged away in mask mode);
- text slots (DIT) attend and are attended exactly as in the dense block
  (:meth:`~grounding.backbone.sam_vit.TextAwareViT._attention`), over the valid image tokens.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, get_rel_pos
from torch import Tensor

from grounding.backbone.token_geometry import GeometryCache, rel_pos_index
from grounding.compress.groups import group_layout
from grounding.tokens import TokenSet

if TYPE_CHECKING:  # pragma: no cover
    from grounding.backbone.sam_vit import TextAwareViT

__all__ = ["gathered_rel_pos_bias", "key_bias", "rel_table", "token_block", "window_pad_cells"]


def rel_table(rel_pos: Tensor, size: int) -> Tensor:
    """(2·size − 1, d) rel-pos table indexed by offset + size − 1, resampled exactly as ``get_rel_pos``.

    ``get_rel_pos(size, size, t)`` returns R[i, j] = table[i − j + size − 1]; row 0 (reversed) and column 0
    hold every entry once, so the table is rebuilt from SAM's own function (same interpolation, same values).
    """
    if rel_pos.shape[0] == 2 * size - 1:  # no resampling: get_rel_pos only indexes, the table is rel_pos itself
        return rel_pos
    r = get_rel_pos(size, size, rel_pos)  # (size, size, d)
    return torch.cat([r[0].flip(0), r[1:, 0]], dim=0)


def gathered_rel_pos_bias(q: Tensor, pos_q: Tensor, pos_k: Tensor, table_h: Tensor, table_w: Tensor) -> Tensor:
    """Decomposed rel-pos bias from token positions: (B', H, Nq, Nk).

    Args:
        q: (B', H, Nq, d) unscaled queries.
        pos_q: (B', Nq, 2) int64 (row, col) of the queries; pos_k: (B', Nk, 2) of the keys.
        table_h, table_w: (2S_h − 1, d), (2S_w − 1, d) from :func:`rel_table`; offsets outside the table are
            clamped (they do not occur for tokens of one grid or one window).
    """
    qh, qw = rel_projections(q, table_h, table_w)
    return bias_from_index(qh, qw, *rel_pos_index(pos_q, pos_k, table_h.shape[0] // 2, table_w.shape[0] // 2))


def rel_projections(q: Tensor, table_h: Tensor, table_w: Tensor) -> tuple[Tensor, Tensor]:
    """Q_h = q · R_hᵀ (B', H, Nq, 2S_h − 1) and Q_w likewise: the per-query half of the decomposed bias."""
    return torch.matmul(q, table_h.to(q.dtype).t()), torch.matmul(q, table_w.to(q.dtype).t())


def bias_from_index(qh: Tensor, qw: Tensor, dr: Tensor, dc: Tensor) -> Tensor:
    """bias[q, k] = Q_h[q, dr[q, k]] + Q_w[q, dc[q, k]]: (B', H, Nq, Nk); ``dr``, ``dc`` (B', Nq, Nk)."""
    heads = qh.shape[1]
    bias = qh.gather(-1, dr[:, None].expand(-1, heads, -1, -1))
    return bias + qw.gather(-1, dc[:, None].expand(-1, heads, -1, -1))


def key_bias(tokens: TokenSet, proportional: bool) -> tuple[Tensor, Tensor]:
    """(B, N) additive key term (log size when ``proportional``; 0 for size-0 tokens) and (B, N) key validity."""
    size = tokens.size.float()
    if proportional:
        bias = torch.where(size > 0, size.clamp_min(torch.finfo(torch.float32).tiny).log(), 0.0)
    else:
        bias = torch.zeros_like(size)
    return bias, tokens.valid


def window_pad_cells(hw: tuple[int, int], ws: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """SAM's zero-padded cells per window: (G, P, 2) int64 (row, col) and (G, P) bool validity.

    G = ceil(h / ws) · ceil(w / ws) windows (row-major, as ``TokenSet.from_grid(window_size=ws)`` numbers them);
    P = the largest number of pad cells of a window (0 when h and w are multiples of ws).
    Cached per (grid, window, device): it depends on nothing else, and building it synchronises with the GPU.
    The returned tensors are shared: do not modify them in place.
    """
    return _window_pad_cells(tuple(hw), int(ws), torch.device(device))


@lru_cache(maxsize=16)
def _window_pad_cells(hw: tuple[int, int], ws: int, device: torch.device) -> tuple[Tensor, Tensor]:
    h, w = hw
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    rows = torch.arange(hp, device=device).repeat_interleave(wp)
    cols = torch.arange(wp, device=device).repeat(hp)
    wid = (rows // ws) * (wp // ws) + cols // ws
    is_pad = (rows >= h) | (cols >= w)
    g = (hp // ws) * (wp // ws)
    if not bool(is_pad.any()):
        return torch.zeros(g, 0, 2, dtype=torch.long, device=device), torch.zeros(g, 0, dtype=torch.bool, device=device)
    lay = group_layout(is_pad[None], wid[None])
    pos = torch.stack([rows, cols], -1)[lay.index[0]]  # (G', P, 2)
    valid = lay.valid[0]
    if pos.shape[0] < g:  # windows after the last padded one have no pad cells
        extra = g - pos.shape[0]
        pos = torch.cat([pos, pos.new_zeros(extra, *pos.shape[1:])])
        valid = torch.cat([valid, valid.new_zeros(extra, valid.shape[1])])
    return pos, valid


def _masked(bias: Tensor, keep: Tensor) -> Tensor:
    """Replace masked logits by the dtype's lowest finite value (a row of masked keys gives no NaN)."""
    return bias.masked_fill(~keep, torch.finfo(bias.dtype).min)


def _split_heads(t: Tensor, heads: int) -> Tensor:
    """(B, N, C) -> (B, H, N, C / H)."""
    return t.reshape(*t.shape[:2], heads, -1).transpose(1, 2)


def _image_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, text_kv: tuple[Tensor, Tensor] | None,
                     tbias: Tensor | None, gate: Tensor | None) -> Tensor:
    """Image queries over image keys (+ text keys, gated or joint, as the dense block): (B', H, Nq, d)."""
    if text_kv is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    tk, tv = text_kv
    t = tk.shape[2]
    tb = tbias if tbias is not None else q.new_zeros(1, 1, 1, t)
    if gate is not None:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        text_part = F.scaled_dot_product_attention(q, tk, tv, attn_mask=tb.expand(q.shape[0], -1, -1, -1))
        return out + torch.tanh(gate).to(out.dtype).view(1, -1, 1, 1) * text_part
    left = tb.expand(q.shape[0], q.shape[1], q.shape[2], t)
    return F.scaled_dot_product_attention(q, torch.cat([tk, k], 2), torch.cat([tv, v], 2),
                                          attn_mask=torch.cat([left, bias], -1))


class _WindowGeometry:
    """What :func:`_windowed` derives from the layout alone (cached per compression event, GeometryCache)."""

    def __init__(self, tokens: TokenSet, ws: int, kb: Tensor) -> None:
        b = tokens.valid.shape[0]
        self.layout = layout = group_layout(tokens.valid, tokens.window_id)
        g, l = layout.index.shape[1:]
        self.g, self.l = g, l
        pos = layout.gather(tokens.pos).reshape(b * g, l, 2)
        self.index = rel_pos_index(pos, pos, ws - 1, ws - 1)  # tables of 2·ws − 1 rows
        self.key_bias = layout.gather(kb[..., None]).reshape(b * g, 1, 1, l)
        self.key_ok = layout.valid.reshape(b * g, 1, 1, l)
        self.pad_index = self.pad_ok = self.has_pad = None
        grid = tokens.grid
        pad_pos, pad_ok = window_pad_cells(grid, ws, pos.device) if grid is not None else (None, None)
        if pad_pos is not None and pad_pos.shape[1] > 0:
            pp = pad_pos[:g].repeat(b, 1, 1)
            self.pad_index = rel_pos_index(pos, pp, ws - 1, ws - 1)  # (B·G, L, P)
            self.pad_ok = pad_ok[:g].repeat(b, 1)[:, None, None, :]
            self.has_pad = pad_ok[:g].any(-1).repeat(b)[:, None, None, None]


def _windowed(vit: TextAwareViT, blk: Block, tokens: TokenSet, q: Tensor, k: Tensor, v: Tensor, kb: Tensor,
              text_kv: tuple[Tensor, Tensor] | None, tbias: Tensor | None, gate: Tensor | None,
              cache: GeometryCache, proportional: bool) -> tuple[Tensor, _WindowGeometry]:
    """Window attention on tokens packed per ``window_id``: output (B, G, L, C) and the window geometry."""
    b, heads, n, d = q.shape
    ws = blk.window_size
    geo = cache.get(tokens, ("window", ws, proportional), lambda: _WindowGeometry(tokens, ws, kb))
    layout, g, l = geo.layout, geo.g, geo.l

    def pack(t: Tensor) -> Tensor:  # (B, H, N, d) -> (B·G, H, L, d)
        return layout.gather(t.transpose(1, 2)).reshape(b * g, l, heads, d).transpose(1, 2)

    qw, kw, vw = pack(q), pack(k), pack(v)
    qh, qwd = rel_projections(qw, rel_table(blk.attn.rel_pos_h, ws), rel_table(blk.attn.rel_pos_w, ws))
    bias = bias_from_index(qh, qwd, *geo.index) + geo.key_bias.to(qh.dtype)
    bias = _masked(bias, geo.key_ok)
    if geo.pad_index is not None:
        # One key per window stands for all its pad cells: k = v = the qkv bias (zero input after norm1).
        c = vit.embed_dim
        qkv_b = blk.attn.qkv.bias
        pk = qkv_b[c:2 * c].reshape(1, heads, 1, d).expand(b * g, heads, 1, d).to(q.dtype)
        pv = qkv_b[2 * c:].reshape(1, heads, 1, d).expand(b * g, heads, 1, d).to(q.dtype)
        pb = _masked(bias_from_index(qh, qwd, *geo.pad_index), geo.pad_ok)  # (B·G, H, L, P)
        pad_logit = torch.logsumexp(pb, dim=-1, keepdim=True)
        bias = torch.cat([bias, _masked(pad_logit, geo.has_pad)], dim=-1)
        kw, vw = torch.cat([kw, pk], 2), torch.cat([vw, pv], 2)
    tkv = None
    if text_kv is not None:
        tkv = (text_kv[0].repeat_interleave(g, 0), text_kv[1].repeat_interleave(g, 0))
        tbias = None if tbias is None else tbias.repeat_interleave(g, 0)
    out = _image_attention(qw, kw, vw, bias, tkv, tbias, gate)  # (B·G, H, L, d)
    return out.transpose(1, 2).reshape(b, g, l, heads * d), geo


def token_attention(vit: TextAwareViT, i: int, blk: Block, tokens: TokenSet, text: Tensor | None,
                    key_valid: Tensor | None, windowed: bool, proportional: bool,
                    cache: GeometryCache | None = None) -> tuple[Tensor, Tensor | None, dict[str, int]]:
    """Attention of normed tokens (``tokens.x`` = norm1 output, (B, N, C)) and normed text (B, T, C).

    Returns the image output (B, N, C), the text output (B, T, C) or None, and the attention layout
    (``q`` query rows, ``k`` keys per query row, per sample) for the FLOP count. ``cache``: layout-only values
    shared by the blocks of one forward (:class:`~grounding.backbone.token_geometry.GeometryCache`).
    """
    cache = cache if cache is not None else GeometryCache()
    attn = blk.attn
    b, n, c = tokens.x.shape
    heads = attn.num_heads
    q, k, v = (_split_heads(t, heads) for t in attn.qkv(tokens.x).chunk(3, dim=-1))  # (B, H, N, d)
    kb, kvalid = cache.get(tokens, ("key_bias", proportional), lambda: key_bias(tokens, proportional))
    text_kv = tq = tbias = gate = None
    if text is not None:
        tq, tk, tv = (_split_heads(t, heads) for t in attn.qkv(text).chunk(3, dim=-1))
        text_kv = (tk, tv)
        if key_valid is not None:
            tbias = torch.zeros(b, 1, 1, text.shape[1], dtype=q.dtype, device=q.device)
            tbias = tbias.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        gate = vit.text_gate[i] if vit.use_text_gate else None
    if windowed and tokens.window_id is not None:
        packed, geo = _windowed(vit, blk, tokens, q, k, v, kb, text_kv, tbias, gate, cache, proportional)
        out = geo.layout.scatter(packed, torch.zeros_like(tokens.x))
        has_pad = geo.pad_index is not None
        shape = {"q": geo.g * geo.l, "k": geo.l + int(has_pad), "table": 2 * (2 * blk.window_size - 1)}
    else:
        grid = tokens.grid or cache.get(tokens, "grid", lambda: (int(tokens.pos[..., 0].max()) + 1,
                                                                  int(tokens.pos[..., 1].max()) + 1))
        th, tw = rel_table(attn.rel_pos_h, grid[0]), rel_table(attn.rel_pos_w, grid[1])
        index = cache.get(tokens, ("global", grid),
                          lambda: rel_pos_index(tokens.pos, tokens.pos, grid[0] - 1, grid[1] - 1))
        bias = bias_from_index(*rel_projections(q, th, tw), *index) + kb[:, None, None, :].to(q.dtype)
        bias = _masked(bias, kvalid[:, None, None, :])
        out = _image_attention(q, k, v, bias, text_kv, tbias, gate).transpose(1, 2).reshape(b, n, c)
        shape = {"q": n, "k": n, "table": 2 * grid[0] - 1 + 2 * grid[1] - 1}
    text_out = None
    if text is not None:
        # Text queries: global over [text ; every valid image token], image keys with the same key bias.
        ib = _masked(kb[:, None, None, :].to(q.dtype).expand(b, 1, 1, n).clone(), kvalid[:, None, None, :])
        tb = tbias if tbias is not None else q.new_zeros(b, 1, 1, text.shape[1])
        to = F.scaled_dot_product_attention(tq, torch.cat([text_kv[0], k], 2), torch.cat([text_kv[1], v], 2),
                                            attn_mask=torch.cat([tb.expand(b, 1, 1, -1), ib], -1))
        text_out = attn.proj(to.transpose(1, 2).reshape(b, text.shape[1], c))
    return attn.proj(out), text_out, shape


def token_block(vit: TextAwareViT, i: int, blk: Block, tokens: TokenSet, text: Tensor | None,
                key_valid: Tensor | None, windowed: bool, proportional: bool,
                cache: GeometryCache | None = None) -> tuple[Tensor, Tensor | None, dict[str, int]]:
    """One pre-norm SAM block on a TokenSet: returns new features (B, N, C), text (B, T, C) and the layout.

    Pass one ``cache`` to every block of a forward: what depends only on the layout is then computed once
    per compression event (:mod:`grounding.backbone.token_geometry`).
    """
    x = tokens.x
    normed = tokens.with_x(blk.norm1(x))
    img_out, text_out, shape = token_attention(vit, i, blk, normed, None if text is None else blk.norm1(text),
                                               key_valid, windowed, proportional, cache)
    x = x + img_out
    x = x + blk.mlp(blk.norm2(x))
    if text is not None:
        text = text + text_out
        text = text + blk.mlp(blk.norm2(text))
    return x, text, shape
