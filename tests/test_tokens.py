"""TokenSet: constructors, invariants (check), dense scatter, device moves, packing."""

from __future__ import annotations

import pytest
import torch

from grounding.tokens import TokenSet, batched_gather, pack_padded, unpack_packed


def test_from_grid_4d_identity_bookkeeping() -> None:
    x = torch.randn(2, 3, 5, 4)
    ts = TokenSet.from_grid(x).check()
    assert ts.x.shape == (2, 15, 4) and ts.grid == (3, 5) and ts.n0 == 15
    assert torch.equal(ts.x, x.reshape(2, 15, 4))
    assert ts.pos.dtype == torch.int64 and ts.pos.shape == (2, 15, 2)
    # Row-major: token 7 is row 1, col 2.
    assert ts.pos[1, 7].tolist() == [1, 2]
    assert torch.equal(ts.src_index, torch.arange(15).expand(2, 15))
    assert torch.equal(ts.size, torch.ones(2, 15)) and ts.valid.all() and not ts.protect.any()
    assert ts.num_tokens.tolist() == [15, 15]
    assert ts.window_id is None


def test_from_grid_flat_with_windows() -> None:
    ts = TokenSet.from_grid(torch.randn(1, 20, 3), grid=(4, 5), window_size=2).check()
    # 2 window rows x 3 window cols (the last column of windows is padded, as SAM pads the grid).
    assert ts.window_id[0].reshape(4, 5).tolist() == [
        [0, 0, 1, 1, 2],
        [0, 0, 1, 1, 2],
        [3, 3, 4, 4, 5],
        [3, 3, 4, 4, 5],
    ]


@pytest.mark.parametrize(
    "x,grid",
    [(torch.randn(1, 20, 3), (4, 4)), (torch.randn(1, 20, 3), None), (torch.randn(1, 4, 5, 3), (5, 4))],
)
def test_from_grid_rejects_bad_grid(x: torch.Tensor, grid: tuple[int, int] | None) -> None:
    with pytest.raises(ValueError, match="grid"):
        TokenSet.from_grid(x, grid=grid)


def test_from_superpoints_sizes_and_padding() -> None:
    feats = torch.randn(2, 4, 6)
    cents = torch.randn(2, 4, 3)
    counts = torch.tensor([[10, 3, 7, 99], [5, 5, 0, 0]])
    valid = torch.tensor([[True, True, True, False], [True, True, False, False]])
    ts = TokenSet.from_superpoints(feats, cents, counts, valid).check()
    assert ts.grid is None and ts.pos.dtype == torch.float32 and ts.pos.shape == (2, 4, 3)
    assert ts.size.tolist() == [[10.0, 3.0, 7.0, 0.0], [5.0, 5.0, 0.0, 0.0]]
    assert ts.src_index.tolist() == [[0, 1, 2, -1], [0, 1, -1, -1]]
    assert torch.equal(ts.unit_size, ts.size)
    assert ts.num_tokens.tolist() == [3, 2]
    with pytest.raises(ValueError, match="centroids"):
        TokenSet.from_superpoints(feats, cents[..., :2], counts, valid)


def _merged() -> TokenSet:
    """Four grid units -> two tokens: units 0 and 1 merged into token 0, unit 2 is token 1, unit 3 dropped."""
    return TokenSet(
        x=torch.tensor([[[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]]]),
        valid=torch.tensor([[True, True, False]]),
        pos=torch.tensor([[[0, 0], [1, 0], [0, 0]]]),
        size=torch.tensor([[2.0, 1.0, 0.0]]),
        src_index=torch.tensor([[0, 0, 1, -1]]),
        grid=(2, 2),
    )


def test_check_accepts_merged_and_dense_values() -> None:
    ts = _merged().check()
    d = ts.dense(fill=-5.0)
    assert d.tolist() == [[[1.0, 2.0], [1.0, 2.0], [3.0, 4.0], [-5.0, -5.0]]]
    g = ts.dense(x=torch.tensor([[10, 20, 30]]), fill=0, as_grid=True)
    assert g.dtype == torch.int64 and g.tolist() == [[[10, 10], [20, 0]]]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"src_index": torch.tensor([[0, 0, 3, -1]])}, "src_index"),
        ({"src_index": torch.tensor([[0, 0, 2, -1]])}, "invalid"),
        ({"size": torch.tensor([[1.0, 1.0, 0.0]])}, "size"),
        # Totals agree (1 + 2 kept + 1 dropped == 4) but the sizes sit on the wrong tokens.
        ({"size": torch.tensor([[1.0, 2.0, 0.0]])}, "sample 0 token 0"),
        ({"pos": torch.zeros(1, 3, 3, dtype=torch.int64)}, "pos"),
        ({"grid": (3, 3)}, "grid"),
        ({"valid": torch.tensor([[1, 1, 0]])}, "bool"),
        ({"window_id": torch.zeros(1, 4, dtype=torch.int64)}, "window_id"),
    ],
)
def test_check_rejects_broken_bookkeeping(change: dict, match: str) -> None:
    fields = {k: getattr(_merged(), k) for k in ("x", "valid", "pos", "size", "src_index", "grid")}
    fields.update(change)
    with pytest.raises(ValueError, match=match):
        TokenSet(**fields).check()


def test_check_mass_with_superpoint_counts_after_drop() -> None:
    ts = TokenSet.from_superpoints(
        torch.randn(1, 3, 2),
        torch.randn(1, 3, 3),
        torch.tensor([[4, 6, 2]]),
        torch.ones(1, 3, dtype=torch.bool),
    )
    # Drop superpoint 1 (6 points): 4 + 2 kept + 6 dropped == 12.
    dropped = TokenSet(
        x=ts.x[:, [0, 2]],
        valid=torch.ones(1, 2, dtype=torch.bool),
        pos=ts.pos[:, [0, 2]],
        size=torch.tensor([[4.0, 2.0]]),
        src_index=torch.tensor([[0, -1, 1]]),
        unit_size=ts.unit_size,
    ).check()
    assert dropped.dense(fill=0.0)[0, 1].abs().sum() == 0
    bad = TokenSet(**{**dropped.__dict__, "size": torch.tensor([[4.0, 3.0]])})
    with pytest.raises(ValueError, match="size"):
        bad.check()


def test_to_moves_every_tensor_and_keeps_meta() -> None:
    ts = TokenSet.from_grid(torch.randn(1, 2, 2, 3), window_size=1)
    ts.score = torch.rand(1, 4)
    moved = ts.to("meta")
    for name, v in moved.__dict__.items():
        if isinstance(v, torch.Tensor):
            assert v.device.type == "meta", name
            assert v.dtype == getattr(ts, name).dtype
    assert moved.grid == (2, 2) and ts.x.device.type == "cpu"


def test_with_x_replaces_features_only() -> None:
    ts = TokenSet.from_grid(torch.randn(2, 2, 2, 3))
    y = torch.randn(2, 4, 7)
    out = ts.with_x(y)
    assert out.x is y and out.src_index is ts.src_index and ts.x.shape[-1] == 3
    with pytest.raises(ValueError, match="with_x"):
        ts.with_x(torch.randn(2, 5, 3))


def test_pack_roundtrip_with_holes() -> None:
    x = torch.arange(12.0).reshape(2, 3, 2)
    valid = torch.tensor([[True, False, True], [False, True, False]])
    packed, cu = pack_padded(x, valid)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 3]
    assert packed.tolist() == [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]
    back = unpack_packed(packed, valid, fill=-1.0)
    assert torch.equal(back[valid], x[valid]) and (back[~valid] == -1).all()
    ts = TokenSet.from_superpoints(x, torch.zeros(2, 3, 3), torch.ones(2, 3), valid)
    p, c = ts.to_packed()
    out = ts.from_packed(p * 2, c)
    assert torch.equal(out.x[valid], 2 * x[valid])
    with pytest.raises(ValueError, match="cu_seqlens"):
        ts.from_packed(p, torch.tensor([0, 1, 3], dtype=torch.int32))


def test_batched_gather_trailing_dims() -> None:
    t = torch.arange(24).reshape(2, 3, 2, 2)
    out = batched_gather(t, torch.tensor([[2, 0], [1, 1]]))
    assert torch.equal(out[0, 0], t[0, 2]) and torch.equal(out[1, 1], t[1, 1]) and out.shape == (2, 2, 2, 2)
