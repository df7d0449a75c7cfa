"""A token-compression schedule inside the common vision backbone (token-compression spec §4.3, §4.6).

:class:`BackboneCompression` is what ``configs/compress/{tome,prune,pool}.yaml`` build and what
``TextAwareViT(compress=...)`` runs: one compressor per scheduled block, applied at the block's **input**
(before ``norm1``), so the block's attention and MLP and every later block run on the reduced set; tokens
stay reduced until the end and the dense grid is restored before SAM's neck (unmerge / scatter back,
:class:`~grounding.compress.CompressionSchedule` in reverse order). Output shapes never change, so DIT and box
retrieval run unchanged.

``ratio`` is always the fraction of image tokens *removed* at each scheduled block (ToMe: merged away, at most
0.5 per block; prune: 1 − keep ratio; pool: 1 − queries / window tokens). Candidates are grouped per SAM
window when the encoder has window blocks (scope "auto"; rectangular per-window budgets, spec §4.5) and per
sample otherwise (DIT's all-global layout).

The similarity / norm metric is ToMe's: the block's keys averaged over heads, computed from ``norm1(x)`` with
the head-averaged key weights (2·N·C·d FLOPs instead of a full key projection); ``metric="features"`` uses the
block input instead (ToMe-SD). DIT text slots enter every plan as ``protect``ed tokens of size 0, placed first,
so they come out untouched in their place.

``pool`` (learned query pooling) is a head-side compressor by design (spec §4.7: it saves the consumer's cost);
it runs here for completeness (learned queries per window), but untrained queries give meaningless features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from grounding.compress.base import CompressContext, CompressionSchedule, Compressor, Identity, Plan, StackEntry
from grounding.compress.groups import group_layout, resolve_groups
from grounding.compress.pool import QueryPool
from grounding.compress.prune import ScorePrune
from grounding.compress.tome import TokenMerge
from grounding.tokens import TokenSet

if TYPE_CHECKING:  # pragma: no cover
    from grounding.backbone.sam_vit import TextAwareViT

__all__ = ["METHODS", "BackboneCompression", "BlockTrace", "dense_block_trace", "forward_compressed"]

METHODS = ("tome", "prune", "pool")


@dataclass
class BlockTrace:
    """What one block processed (per sample, padded counts: what the hardware runs).

    Fields: block index; ``tokens`` valid image tokens (mean over the batch); ``rows`` image rows through
    MLP; ``qkv_rows`` rows through qkv / proj (SAM's padded grid in dense window blocks); ``attn_q`` query rows
    of image attention and ``attn_k`` keys per query row; ``table`` rel-pos table entries per query (both axes);
    ``text`` text slots T; ``compressor`` the matmul FLOPs of the compressor applied at this block's input;
    ``mode``: "dense", "gather" or "mask".
    """

    block: int
    tokens: float
    rows: int
    qkv_rows: int
    attn_q: int
    attn_k: int
    table: int
    text: int = 0
    compressor: float = 0.0
    mode: str = "dense"


class BackboneCompression(nn.Module):
    """Per-block compressors for :class:`~grounding.backbone.sam_vit.TextAwareViT`, built from plain values.

    Args:
        method: "tome", "prune" or "pool".
        ratio: fraction of image tokens removed at each scheduled block (0 = identity).
        start_block: the one scheduled block when ``blocks`` is None.
        blocks: explicit scheduled blocks (each removes ``ratio`` of what is left).
        scope: "auto" (windows when the encoder has window blocks), "window" or "global".
        mode: "gather" (real removal, speed) or "mask" (in place, no speed-up, for training / checks).
        metric: "keys" (head-averaged keys of the block, ToMe) or "features" (the block input).
        proportional: add log(size) to attention logits (ToMe's proportional attention).
        scorer: prune scorer ("keynorm": training-free; "learned": needs training).
        num_queries: pool queries per group (None: from ``ratio`` and the window, or the pretraining grid).
        skip_identity: a plan that changes nothing is dropped, so the block runs the dense code (bit-exact).
    """

    def __init__(self, method: str = "tome", ratio: float = 0.5, start_block: int = 0,
                 blocks: Sequence[int] | None = None, scope: str = "auto", mode: str = "gather",
                 metric: str = "keys", proportional: bool = True, scorer: str = "keynorm",
                 num_queries: int | None = None, skip_identity: bool = True) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"BackboneCompression.method must be one of {METHODS}, got {method!r}")
        if not 0.0 <= float(ratio) < 1.0:
            raise ValueError(f"BackboneCompression.ratio (fraction removed) must be in [0, 1), got {ratio}")
        if method == "tome" and ratio > 0.5:
            raise ValueError("BackboneCompression: ToMe merges at most half the tokens per block; schedule "
                             f"several blocks instead of ratio {ratio}")
        if metric not in ("keys", "features"):
            raise ValueError(f"BackboneCompression.metric must be 'keys' or 'features', got {metric!r}")
        self.method, self.ratio, self.scope, self.mode = method, float(ratio), scope, mode
        self.blocks = tuple(int(b) for b in (blocks if blocks is not None else [start_block]))
        self.metric, self.proportional, self.scorer = metric, proportional, scorer
        self.num_queries, self.skip_identity = num_queries, skip_identity
        self.schedule = CompressionSchedule({}, carry=True)
        self.trace: list[BlockTrace] = []

    def extra_repr(self) -> str:
        return f"method={self.method!r}, ratio={self.ratio}, blocks={self.blocks}, scope={self.scope!r}"

    def bind(self, dim: int, depth: int, window_size: int, grid: tuple[int, int]) -> BackboneCompression:
        """Build the compressors for an encoder of width ``dim`` (called by ``TextAwareViT``)."""
        bad = [b for b in self.blocks if not 0 <= b < depth]
        if bad:
            raise ValueError(f"BackboneCompression: blocks {bad} outside the encoder's 0..{depth - 1}")
        stages = {b: self._make(dim, window_size, grid) for b in self.blocks}
        self.schedule = CompressionSchedule(stages, carry=True)
        return self

    def _make(self, dim: int, window_size: int, grid: tuple[int, int]) -> Compressor:
        if self.method == "tome":
            return TokenMerge(ratio=self.ratio, scope=self.scope, mode=self.mode)
        if self.method == "prune":
            return ScorePrune(ratio=1.0 - self.ratio, scorer=self.scorer, dim=dim, scope=self.scope, mode=self.mode)
        group = window_size ** 2 if (self.scope != "global" and window_size > 0) else grid[0] * grid[1]
        m = self.num_queries or max(1, round((1.0 - self.ratio) * group))
        heads = next(h for h in (8, 4, 2, 1) if dim % h == 0)
        return QueryPool(dim=dim, num_queries=m, num_heads=heads, scope=self.scope, proportional=self.proportional,
                         mode=self.mode)

    def stage(self, block: int) -> Compressor | None:
        key = str(block)
        return self.schedule.stages[key] if key in self.schedule.stages else None  # type: ignore[return-value]


def as_backbone_compression(compress: Any) -> BackboneCompression | None:
    """Normalise ``TextAwareViT(compress=...)``: None / ``Identity`` (``compress=none``) -> None."""
    if compress is None or isinstance(compress, Identity):
        return None
    if isinstance(compress, BackboneCompression):
        return compress
    raise ValueError(f"TextAwareViT: compress must be a BackboneCompression (configs/compress/tome|prune|pool.yaml) "
                     f"or none; {type(compress).__name__} is a head-side compressor")


def _is_identity(plan: Plan, tokens: TokenSet) -> bool:
    """The plan keeps every token as itself in its place (nothing merged, dropped or re-ordered)."""
    n = tokens.valid.shape[1]
    if type(plan) is not Plan or plan.merges or plan.slot_weight is not None or plan.n_slots != n:
        return False
    arange = torch.arange(n, device=plan.assign.device).expand_as(plan.assign)
    return bool(torch.equal(plan.rep_index, arange) and torch.equal(plan.slot_valid, tokens.valid)
                and torch.equal(plan.assign, torch.where(tokens.valid, arange, -1)))


def _metric(blk: nn.Module, x: Tensor, how: str) -> Tensor:
    """(B, N, d) head-averaged keys of ``norm1(x)`` (ToMe's metric) or the features themselves."""
    if how == "features":
        return x
    attn = blk.attn
    c, heads = x.shape[-1], attn.num_heads
    w = attn.qkv.weight[c:2 * c].reshape(heads, c // heads, c).mean(0)
    b = attn.qkv.bias[c:2 * c].reshape(heads, c // heads).mean(0)
    return torch.nn.functional.linear(blk.norm1(x), w, b)


def _compressor_flops(comp: Compressor, tokens: TokenSet, dim: int, head_dim: int, metric: str) -> float:
    """Matmul FLOPs per sample of planning + applying ``comp`` on ``tokens`` (spec §3.6)."""
    n = tokens.valid.shape[1]
    metric_cost = 2.0 * n * dim * head_dim if metric == "keys" else 0.0
    mdim = head_dim if metric == "keys" else dim
    cand = tokens.valid & ~tokens.protect
    layout = group_layout(cand, resolve_groups(tokens, getattr(comp, "scope", "global")))
    g, l = layout.index.shape[1:]
    if isinstance(comp, TokenMerge):
        return metric_cost + 2.0 * g * ((l + 1) // 2) * (l // 2) * mdim
    if isinstance(comp, ScorePrune):
        if comp.scorer == "learned":
            hid = comp.mlp[1].out_features  # type: ignore[index]
            return 2.0 * n * (dim * hid + hid)
        return metric_cost if comp.scorer == "keynorm" else 0.0
    if isinstance(comp, QueryPool):
        m = comp.num_queries
        # k and v projections of every member, the query projection, logits and mixing, output projection.
        return 4.0 * g * l * dim * dim + 2.0 * m * dim * dim + 4.0 * g * m * l * dim + 2.0 * g * m * dim * dim
    return 0.0


def _with_text(ts: TokenSet, text: Tensor | None) -> TokenSet:
    """Prepend T text slots as protected, size-0 tokens (units of mass 0), so plans never touch them."""
    if text is None:
        return ts
    b, t = text.shape[:2]
    dev = ts.x.device
    ones = torch.ones(b, t, dtype=torch.bool, device=dev)
    return TokenSet(
        x=torch.cat([text.to(ts.x.dtype), ts.x], 1),
        valid=torch.cat([ones, ts.valid], 1),
        pos=torch.cat([ts.pos.new_zeros(b, t, 2), ts.pos], 1),
        size=torch.cat([ts.size.new_zeros(b, t), ts.size], 1),
        src_index=torch.cat([torch.arange(t, device=dev).expand(b, t), torch.where(ts.src_index >= 0,
                                                                                  ts.src_index + t, -1)], 1),
        unit_size=torch.cat([ts.unit_size.new_zeros(b, t), ts.unit_size], 1),
        protect=torch.cat([ones, ts.protect], 1),
        window_id=None if ts.window_id is None else torch.cat([ts.window_id.new_zeros(b, t), ts.window_id], 1),
        grid=None,
    )


def _without_text(joint: TokenSet, t: int, grid: tuple[int, int]) -> tuple[TokenSet, Tensor | None]:
    """Split the protected text slots (always the first T slots after any plan) off again."""
    if t == 0:
        return replace(joint, grid=grid), None
    src = joint.src_index[:, t:]
    ts = TokenSet(x=joint.x[:, t:], valid=joint.valid[:, t:], pos=joint.pos[:, t:], size=joint.size[:, t:],
                  src_index=torch.where(src >= 0, src - t, -1), unit_size=joint.unit_size[:, t:],
                  protect=joint.protect[:, t:],
                  window_id=None if joint.window_id is None else joint.window_id[:, t:], grid=grid)
    return ts, joint.x[:, :t]


def dense_block_trace(vit: TextAwareViT, i: int, hw: tuple[int, int], windowed: bool, t: int) -> BlockTrace:
    """Trace of uncompressed block i on an (h, w) grid: window blocks run qkv / proj on SAM's padded grid."""
    h, w = hw
    if windowed:
        ws = vit.blocks[i].window_size
        hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
        return BlockTrace(i, float(h * w), h * w, hp * wp, hp * wp, ws * ws, 2 * ws, t)
    return BlockTrace(i, float(h * w), h * w, h * w, h * w, h * w, h + w, t)


def forward_compressed(vit: TextAwareViT, comp: BackboneCompression, x: Tensor, text_hook: Any,
                       key_valid: Tensor | None) -> Tensor:
    """The block loop of ``TextAwareViT.forward_tokens`` with ``comp``'s schedule: (B, h, w, C) -> (B, h, w, C).

    Blocks before the first effective plan run the dense code; from then on the tokens are a TokenSet
    (:func:`~grounding.backbone.token_attention.token_block`); the dense grid is restored after the last block.
    Fills ``comp.trace`` with one :class:`BlockTrace` per block.
    """
    from grounding.backbone.token_attention import token_block
    from grounding.backbone.token_geometry import GeometryCache

    b, h, w, c = x.shape
    comp.schedule.reset()
    comp.trace = []
    tokens: TokenSet | None = None
    text: Tensor | None = None
    n_text = 0
    head_dim = c // vit.num_heads
    sam_windows = not vit.global_all_blocks
    window = max(blk.window_size for blk in vit.blocks) if sam_windows else 0
    cache = GeometryCache()  # layout-only values, recomputed after each compression event only
    for i, blk in enumerate(vit.blocks):
        if text_hook is not None:
            text = vit._checked_text(i, text_hook(i, text), x if tokens is None else tokens.x, key_valid)
        n_text = 0 if text is None else text.shape[1]
        windowed = sam_windows and blk.window_size > 0
        stage = comp.stage(i)
        flops = 0.0
        if stage is not None:
            ts = tokens if tokens is not None else TokenSet.from_grid(x, window_size=window or None)
            ts = replace(ts, grid=(h, w))
            joint = _with_text(ts, text)
            ctx = CompressContext(block=i, extras={"metric": _metric(blk, joint.x, comp.metric)})
            plan = stage.plan(joint, ctx)
            if not (comp.skip_identity and _is_identity(plan, joint)):
                flops = _compressor_flops(stage, joint, c, head_dim, comp.metric)
                comp.schedule.stack.append(StackEntry(i, stage, plan, joint.x))
                tokens, text = _without_text(stage.apply(plan, joint), n_text, (h, w))
        if tokens is None:
            x, text = vit._block(i, blk, x, text, key_valid)
            comp.trace.append(replace(dense_block_trace(vit, i, (h, w), windowed, n_text), compressor=flops))
            continue
        feats, text, shape = token_block(vit, i, blk, tokens, text, key_valid, windowed, comp.proportional, cache)
        tokens = tokens.with_x(feats)
        kept = cache.get(tokens, "kept", lambda v=tokens.valid: float(v.sum(1).float().mean()))
        comp.trace.append(BlockTrace(i, kept, tokens.valid.shape[1],
                                     tokens.valid.shape[1], shape["q"], shape["k"], shape["table"], n_text, flops,
                                     comp.mode))
    if tokens is None:
        return x
    slots = tokens.x if n_text == 0 else torch.cat([tokens.x.new_zeros(b, n_text, c), tokens.x], 1)
    dense = comp.schedule.restore(slots)
    return dense[:, dense.shape[1] - h * w:].reshape(b, h, w, c)
