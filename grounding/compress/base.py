"""Compressor interface: budgets, context, plans, generic apply/restore and a schedule (spec §4.3–4.5).

A compressor only decides (``plan``); applying and restoring are generic over one plan format:

- every pre-plan token n is assigned to a post-plan *slot* ``assign[b, n]`` (-1 = dropped without
  merge); ``direct[b, n]`` says the slot is the token itself or the destination it was merged into
  (restore copies the slot's output back: keep or unmerge); tokens absorbed into a summary slot (the
  fused token) are not direct, so restore prefers their carried pre-plan value and only broadcasts the
  summary when nothing is carried;
- every slot has a representative pre-plan token ``rep_index`` (a kept token, a merge destination or
  the first token of a fused group) that gives it its non-averaged fields (grid position, window, protect).

Slot layout per mode: **gather** packs kept tokens first, in ascending original order, padded to the
batch's largest keep count K (real removal, real speed-up); **mask** keeps the N rows in place and marks
dropped ones invalid, their features zeroed (no speed-up; consumers must use ``valid`` as key-padding mask).
Extra slots (the fused token) follow in both layouts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, overload

import torch
from torch import Tensor, nn

from grounding.tokens import TokenSet, batched_gather

MODES = ("mask", "gather")


@dataclass(frozen=True)
class Budget:
    """How many candidate tokens to keep per sample.

    ``k`` (fixed count, keeps batches rectangular) takes precedence over ``ratio``. A ratio keeps
    floor(ratio · n_candidates) tokens, at least ``min_keep`` (spec §4.5: round down, floor ≥ 1), never more
    than there are candidates. A 1e-9 slack stops 0.29 · 100 from flooring to 28.
    """

    ratio: float | None = None
    k: int | None = None
    min_keep: int = 1

    def __post_init__(self) -> None:
        if self.k is None and self.ratio is None:
            raise ValueError("Budget: set ratio (0 < ratio <= 1) or k (>= 1)")
        if self.k is not None and self.k < 1:
            raise ValueError(f"Budget.k must be >= 1, got {self.k}")
        if self.k is None and not 0.0 < float(self.ratio) <= 1.0:
            raise ValueError(f"Budget.ratio must be in (0, 1], got {self.ratio}")

    def keep_counts(self, n_candidates: Tensor) -> Tensor:
        """(B,) int64 candidates per sample -> (B,) int64 tokens to keep (0 only when there are none)."""
        n = n_candidates.long()
        if self.k is not None:
            return n.clamp(max=self.k)
        k = torch.floor(n.double() * float(self.ratio) + 1e-9).long().clamp(min=self.min_keep)
        return torch.minimum(k, n)


@dataclass
class CompressContext:
    """What a compressor may look at besides the tokens.

    Fields:
        block: index of the transformer block (or decoder stage) the plan is made for.
        budget: overrides the compressor's own budget when given.
        mode: "mask" or "gather"; overrides the compressor's own mode when given.
        text: (B, C) sentence features or (B, T, C) word/token features.
        text_mask: (B, T) bool, True for real text tokens (padding False).
        extras: anything else a plugin needs, e.g. probe attention statistics.
    """

    block: int = 0
    budget: Budget | None = None
    mode: str | None = None
    text: Tensor | None = None
    text_mask: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """A compressor's decision for one batch; everything ``apply`` and ``restore`` need.

    Fields (N = pre-plan token slots, S = post-plan slots, K = largest keep count in the batch):
        mode: "mask" or "gather".
        n_before: N.
        keep_mask: (B, N) bool, tokens kept as themselves (protected tokens included).
        kept_index: (B, K) int64, pre-plan indices of kept tokens, ascending; padded with 0.
        kept_valid: (B, K) bool, False on padding entries of ``kept_index``.
        assign: (B, N) int64, post-plan slot of each token or -1 (dropped without merge).
        direct: (B, N) bool, token restored from its own slot (kept or merged), whatever is carried.
        rep_index: (B, S) int64, representative pre-plan token of each slot.
        slot_valid: (B, S) bool, slot holds at least one token.
        weight: (B, N) float, pre-plan sizes, the weights of averaged slots.
        merges: some slot averages more than one token (False: pure selection, apply is a gather).
        slot_weight: optional (B, S) straight-through keep weight, exactly 1 in the forward pass;
            multiplies features so gradients reach the scores (see TextGuidedTopK).
        scores: optional (B, N) scores the decision came from, for logging.
        block: block index the plan was made for.
    """

    mode: str
    n_before: int
    keep_mask: Tensor
    kept_index: Tensor
    kept_valid: Tensor
    assign: Tensor
    direct: Tensor
    rep_index: Tensor
    slot_valid: Tensor
    weight: Tensor
    merges: bool = False
    slot_weight: Tensor | None = None
    scores: Tensor | None = None
    block: int = 0

    @property
    def n_slots(self) -> int:
        """S, the token count after the plan (padded)."""
        return self.rep_index.shape[1]

    @property
    def num_kept(self) -> Tensor:
        """(B,) int64, tokens kept as themselves per sample."""
        return self.keep_mask.sum(dim=1)


def build_selection_plan(
    tokens: TokenSet,
    keep: Tensor,
    mode: str,
    *,
    fuse: bool = False,
    keep_weight: Tensor | None = None,
    scores: Tensor | None = None,
    block: int = 0,
) -> Plan:
    """Plan that keeps ``keep`` (B, N) bool, for pruning-type compressors.

    Padding is never kept; valid protected tokens always are. With ``fuse``, the valid tokens not kept
    are averaged (size-weighted) into one extra slot per sample (EViT's fused token), invalid when that
    sample dropped nothing. ``keep_weight`` (B, N) is an optional straight-through weight.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b, n = keep.shape
    dev = keep.device
    keep = (keep & tokens.valid) | (tokens.protect & tokens.valid)
    num_kept = keep.sum(dim=1)
    arange = torch.arange(n, device=dev).unsqueeze(0).expand(b, n)
    # Stable sort on "not kept" puts kept tokens first in their original order: gather keeps spatial order.
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices
    k_max = int(num_kept.max()) if b > 0 else 0
    kept_index = order[:, :k_max]
    kept_valid = arange[:, :k_max] < num_kept.unsqueeze(1)
    if mode == "gather":
        rank = torch.empty_like(order).scatter_(1, order, arange)
        assign = torch.where(keep, rank, -1)
        rep_index, slot_valid = kept_index, kept_valid
        slot_weight = None if keep_weight is None else keep_weight.gather(1, kept_index)
    else:
        assign = torch.where(keep, arange, -1)
        rep_index, slot_valid, slot_weight = arange, keep, keep_weight
    if fuse:
        absorbed = tokens.valid & ~keep
        fused_slot = rep_index.shape[1]
        first = absorbed.to(torch.uint8).argmax(dim=1, keepdim=True)  # first absorbed token (0 if none)
        rep_index = torch.cat([rep_index, first], dim=1)
        slot_valid = torch.cat([slot_valid, absorbed.any(dim=1, keepdim=True)], dim=1)
        assign = torch.where(absorbed, fused_slot, assign)
        if slot_weight is not None:
            slot_weight = torch.cat([slot_weight, slot_weight.new_ones(b, 1)], dim=1)
    return Plan(
        mode=mode,
        n_before=n,
        keep_mask=keep,
        kept_index=kept_index,
        kept_valid=kept_valid,
        assign=assign,
        direct=keep,
        rep_index=rep_index,
        slot_valid=slot_valid,
        weight=tokens.size,
        merges=fuse,
        slot_weight=slot_weight,
        scores=scores,
        block=block,
    )


def _trail(mask: Tensor, like: Tensor) -> Tensor:
    """(B, M) mask viewed to broadcast against (B, M, *) ``like``."""
    return mask.reshape(*mask.shape, *([1] * (like.dim() - 2)))


def _slot_reduce(plan: Plan, t: Tensor, mean: bool) -> tuple[Tensor, Tensor]:
    """Size-weighted mean (or plain sum) of ``t`` (B, N, *) per slot -> (B, S, *) and member counts (B, S)."""
    member = plan.assign >= 0
    idx = plan.assign.clamp(min=0)
    b, s = plan.rep_index.shape
    tf = t.float()  # accumulate half-precision inputs in float32
    w = torch.where(member, plan.weight.float(), 0.0) if mean else member.float()
    num = tf.new_zeros(b, s, *t.shape[2:]).scatter_add_(
        1, idx.reshape(*idx.shape, *([1] * (t.dim() - 2))).expand_as(tf).contiguous(), tf * _trail(w, tf)
    )
    count = tf.new_zeros(b, s).scatter_add_(1, idx, member.float())
    if mean:
        den = tf.new_zeros(b, s).scatter_add_(1, idx, w)
        num = num / _trail(den.clamp_min(torch.finfo(torch.float32).tiny), num)
    return num.to(t.dtype), count


def _apply_tensor(plan: Plan, t: Tensor, features: bool = True) -> Tensor:
    """(B, N, *) -> (B, S, *). Floats: representative's row, or the size-weighted mean for slots with
    several members; with ``features`` also times the straight-through weight and zero in empty slots.
    Other dtypes: the representative's value (merged image tokens keep the destination's grid cell)."""
    if t.shape[:2] != plan.keep_mask.shape:
        raise ValueError(
            f"apply: tensor {tuple(t.shape)} must start with (B, N) = {tuple(plan.keep_mask.shape)}"
        )
    out = batched_gather(t, plan.rep_index)
    if not t.is_floating_point():
        return out
    if plan.merges:
        mean, count = _slot_reduce(plan, t, mean=True)
        out = torch.where(_trail(count > 1, out), mean, out)
    if features:
        if plan.slot_weight is not None:
            out = out * _trail(plan.slot_weight.to(out.dtype), out)
        out = torch.where(
            _trail(plan.slot_valid, out), out, torch.zeros((), dtype=out.dtype, device=out.device)
        )
    return out


def _apply_tokens(plan: Plan, ts: TokenSet) -> TokenSet:
    size, _ = _slot_reduce(plan, ts.size, mean=False)
    src = ts.src_index
    return replace(
        ts,
        x=_apply_tensor(plan, ts.x),
        valid=plan.slot_valid,
        # Float centroids are averaged by size (§4.9); grid cells come from the representative (§4.6).
        pos=_apply_tensor(plan, ts.pos, features=False),
        size=size,
        src_index=torch.where(src >= 0, plan.assign.gather(1, src.clamp(min=0)), -1),
        protect=ts.protect.gather(1, plan.rep_index) & plan.slot_valid,
        window_id=None if ts.window_id is None else ts.window_id.gather(1, plan.rep_index),
        score=None if ts.score is None else _apply_tensor(plan, ts.score, features=False),
    )


@overload
def apply_plan(plan: Plan, target: TokenSet) -> TokenSet: ...
@overload
def apply_plan(plan: Plan, target: Tensor) -> Tensor: ...
def apply_plan(plan: Plan, target: Tensor | TokenSet) -> Tensor | TokenSet:
    """Map a TokenSet, or any (B, N, *) tensor aligned with its tokens, to the post-plan slots (B, S, *).

    For a TokenSet, sizes are summed per slot and ``src_index`` is composed with ``assign``; a raw float
    tensor is treated as features (averaged, straight-through weighted, zero in empty slots).
    """
    if isinstance(target, TokenSet):
        return _apply_tokens(plan, target)
    return _apply_tensor(plan, target)


def restore_plan(plan: Plan, tensor: Tensor, carried: Tensor | None = None, fill: float = 0.0) -> Tensor:
    """Inverse mapping of post-plan outputs (B, S, *) to the pre-plan layout (B, N, *).

    Kept and merged tokens copy their slot's output (keep / unmerge). Other tokens take ``carried``
    (B, N, *), the pre-plan tensor (DynamicViT's skip path), when given; else tokens absorbed into a
    fused slot get its output broadcast, and tokens dropped without merge (and padding) get ``fill``.
    """
    b, n = plan.keep_mask.shape
    if tensor.shape[:2] != (b, plan.n_slots):
        raise ValueError(
            f"restore: tensor {tuple(tensor.shape)} must start with (B, S) = {(b, plan.n_slots)}"
        )
    slot_val = batched_gather(tensor, plan.assign.clamp(min=0))
    if carried is not None:
        if carried.shape != slot_val.shape:
            raise ValueError(f"restore: carried {tuple(carried.shape)} must be {tuple(slot_val.shape)}")
        other = carried.to(tensor.dtype)
    else:
        fill_t = torch.full((), fill, dtype=tensor.dtype, device=tensor.device)
        other = torch.where(_trail(plan.assign >= 0, slot_val), slot_val, fill_t)
    return torch.where(_trail(plan.direct, slot_val), slot_val, other)


class Compressor(nn.Module, ABC):
    """A token-compression plugin: ``plan`` decides, ``apply`` maps tokens, ``restore`` maps outputs back.

    It is an ``nn.Module`` so that learned scorers and projections register their parameters.
    ``nn.Module.apply(fn)`` keeps working: a lone callable argument goes to it (recursive init).
    """

    def __init__(self, mode: str = "gather", fill: float = 0.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.fill = fill

    def resolve_mode(self, ctx: CompressContext | None) -> str:
        """The context's mode when it sets one, else the compressor's own."""
        mode = ctx.mode if ctx is not None and ctx.mode is not None else self.mode
        if mode not in MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {MODES}, got {mode!r}")
        return mode

    @abstractmethod
    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Plan:
        """Decide which tokens to keep, merge or drop for this batch."""

    def apply(self, plan: Any, target: Tensor | TokenSet | None = None) -> Any:  # type: ignore[override]
        """Map a TokenSet or an aligned (B, N, *) tensor through ``plan`` (see :func:`apply_plan`)."""
        if target is None and callable(plan) and not isinstance(plan, Plan):
            return super().apply(plan)
        if target is None:
            raise TypeError("apply(plan, target): target is missing")
        return apply_plan(plan, target)

    def restore(
        self, plan: Plan, tensor: Tensor, carried: Tensor | None = None, fill: float | None = None
    ) -> Tensor:
        """Map (B, S, *) outputs back to the pre-plan layout (see :func:`restore_plan`)."""
        return restore_plan(plan, tensor, carried, self.fill if fill is None else fill)

    def forward(self, tokens: TokenSet, ctx: CompressContext | None = None) -> tuple[TokenSet, Plan]:
        """plan + apply in one call."""
        plan = self.plan(tokens, ctx)
        return apply_plan(plan, tokens), plan


class Identity(Compressor):
    """No compression: keeps every valid token in place; restore is exact (the ``compress=none`` config)."""

    def __init__(self, mode: str = "mask", fill: float = 0.0) -> None:
        super().__init__(mode, fill)

    def plan(self, tokens: TokenSet, ctx: CompressContext | None = None) -> Plan:
        # The in-place layout already is the identity, so gather would only cost a copy.
        block = ctx.block if ctx is not None else 0
        return build_selection_plan(tokens, tokens.valid, "mask", block=block)


@dataclass
class StackEntry:
    """One applied stage: which compressor, its plan, and the pre-plan features carried for restore."""

    block: int
    compressor: Compressor
    plan: Plan
    carried: Tensor | None


class CompressionSchedule(nn.Module):
    """Runs compressors at given blocks, records their plans, and restores in reverse order.

    Args:
        stages: block index -> compressor (string keys from YAML are converted to int).
        carry: keep each stage's pre-plan features so restore gives dropped tokens their last features
            (DynamicViT's skip path); otherwise they get the compressor's fill / fused broadcast.
    """

    def __init__(self, stages: Mapping[int | str, Compressor] | None = None, carry: bool = True) -> None:
        super().__init__()
        self.stages = nn.ModuleDict({str(int(k)): v for k, v in (stages or {}).items()})
        self.carry = carry
        self.stack: list[StackEntry] = []

    def reset(self) -> None:
        """Forget recorded plans (call at the start of every forward pass)."""
        self.stack = []

    @property
    def plans(self) -> list[Plan]:
        return [e.plan for e in self.stack]

    def step(self, tokens: TokenSet, block: int, ctx: CompressContext | None = None) -> TokenSet:
        """Compress ``tokens`` when a stage is registered at ``block``; otherwise return them unchanged."""
        key = str(int(block))
        if key not in self.stages:
            return tokens
        comp: Compressor = self.stages[key]  # type: ignore[assignment]
        ctx = CompressContext(block=block) if ctx is None else replace(ctx, block=block)
        plan = comp.plan(tokens, ctx)
        self.stack.append(StackEntry(block, comp, plan, tokens.x if self.carry else None))
        return comp.apply(plan, tokens)

    def restore(self, tensor: Tensor, fill: float | None = None) -> Tensor:
        """Undo every recorded stage, last first: (B, S_last, *) -> (B, N_first, *); empties the stack."""
        while self.stack:
            e = self.stack.pop()
            tensor = e.compressor.restore(e.plan, tensor, carried=e.carried, fill=fill)
        return tensor
