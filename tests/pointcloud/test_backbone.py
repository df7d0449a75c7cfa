"""SparseUNet (rgsan-mdin spec §2): key names, CPU forward/backward, batching, freezing, checkpoint reports.

CPU tests run spconv's native algorithm; the ``gpu`` tests compare the CUDA implicit-GEMM path against it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

from pointcloud.backbone import SparseUNet
from pointcloud.checkpoint import (
    SPARSE_UNET_PREFIXES,
    CheckpointMismatchError,
    load_state_dict_report,
    spconv1_to_spconv2,
)

SHAPE = (128, 128, 128)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """spconv's CPU path issues ~30 small GEMMs per conv; with OpenMP threads competing against other processes
    on a small machine they spin and run ~10x slower, so these tests use one thread (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def room_voxels(seed: int, size: int = 40, n: int = 6000) -> Tensor:
    """(V, 3) int64 unique voxels, voxel units, of a room-like surface scene: floor, two walls and a box,
    in shuffled order (so "output in input order" is not an accident of sorted input)."""
    g = torch.Generator().manual_seed(seed)
    k = n // 4
    u = torch.rand(k, 2, generator=g) * size
    floor = torch.stack([u[:, 0], u[:, 1], torch.zeros(k)], 1)
    wall_x = torch.stack([torch.zeros(k), u[:, 0], u[:, 1] * 0.6], 1)
    wall_y = torch.stack([u[:, 0], torch.zeros(k), u[:, 1] * 0.6], 1)
    box = (torch.rand(k, 3, generator=g) - 0.5) * 8
    face = torch.randint(0, 3, (k,), generator=g)
    rows = torch.arange(k)
    box[rows, face] = torch.sign(box[rows, face]) * 4
    box = box + torch.rand(3, generator=g) * size * 0.5 + size * 0.2
    vox = torch.unique(torch.cat([floor, wall_x, wall_y, box]).floor().long().clamp(0, SHAPE[0] - 1), dim=0)
    return vox[torch.randperm(vox.shape[0], generator=g)]


def batch_of(*scenes: Tensor) -> Tensor:
    """(V, 4) int32 ``[batch, x, y, z]`` for scenes given as (V_b, 3) voxel coordinates."""
    return torch.cat([torch.cat([torch.full((s.shape[0], 1), b), s], 1) for b, s in enumerate(scenes)]).int()


def expected_keys(in_channels: int = 6, base: int = 32, levels: int = 5, reps: int = 2) -> dict[str, tuple]:
    """Key -> shape of the SPFormer module tree, written from the spec's rules (not from the module)."""
    keys: dict[str, tuple] = {}

    def bn(p: str, c: int) -> None:
        keys.update({f"{p}.weight": (c,), f"{p}.bias": (c,), f"{p}.running_mean": (c,), f"{p}.running_var": (c,),
                     f"{p}.num_batches_tracked": ()})

    def conv(p: str, cin: int, cout: int, k: int) -> None:
        keys[f"{p}.weight"] = (cout, k, k, k, cin)  # spconv 2.x KRSC

    def block(p: str, cin: int, cout: int) -> None:
        bn(f"{p}.conv_branch.0", cin)
        conv(f"{p}.conv_branch.2", cin, cout, 3)
        bn(f"{p}.conv_branch.3", cout)
        conv(f"{p}.conv_branch.5", cout, cout, 3)
        if cin != cout:
            conv(f"{p}.i_branch.0", cin, cout, 1)

    conv("input_conv.0", in_channels, base, 3)
    prefix = "unet"
    for i in range(levels):
        c = base * (i + 1)
        for r in range(reps):
            block(f"{prefix}.blocks.block{r}", c, c)
        if i < levels - 1:
            bn(f"{prefix}.conv.0", c)
            conv(f"{prefix}.conv.2", c, c + base, 2)
            bn(f"{prefix}.deconv.0", c + base)
            conv(f"{prefix}.deconv.2", c + base, c, 2)
            for r in range(reps):
                block(f"{prefix}.blocks_tail.block{r}", 2 * c if r == 0 else c, c)
        prefix += ".u"
    bn("output_layer.0", base)
    return keys


def test_state_dict_matches_spformer_tree() -> None:
    model = SparseUNet()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_keys()
    assert sorted(got) == sorted(want)
    assert got == want
    n_params = sum(p.numel() for p in model.parameters())
    want_params = sum(int(torch.tensor(s).prod()) for k, s in want.items() if k.endswith(("weight", "bias")))
    print(f"SparseUNet: {len(got)} state-dict entries, {n_params:,} parameters")
    assert n_params == want_params == 10_960_384
    # BN initialisation of the spec: weight 1, bias 0, eps 1e-4, momentum 0.1.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 45
    assert all(m.eps == 1e-4 and m.momentum == 0.1 for m in bns)
    assert all(bool((m.weight == 1).all()) and bool((m.bias == 0).all()) for m in bns)


def test_cpu_forward_backward_and_native_algorithm() -> None:
    torch.manual_seed(0)
    model = SparseUNet()
    a, b = room_voxels(0), room_voxels(1)
    coords = batch_of(a, b)
    feats = torch.randn(coords.shape[0], 6, requires_grad=True)
    out = model(feats, coords, SHAPE, 2)
    assert out.shape == (coords.shape[0], 32)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    grad = model.input_conv[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert feats.grad is not None and torch.isfinite(feats.grad).all()
    convs = {name: m.algo for name, m in model.named_modules() if hasattr(m, "algo")}
    assert len(convs) == 1 + 5 * 4 + 4 * (2 + 4 + 1)  # input, level blocks, down/up, tail blocks + 1x1 shortcut
    assert {a.name for a in convs.values()} == {"Native"}
    # A CUDA input would restore spconv's own default (set here without running anything on CUDA).
    model.use_algorithm_for("cuda")
    assert {m.algo for m in model.modules() if hasattr(m, "algo")} == set(model._default_algo.values())
    model.use_algorithm_for("cpu")
    assert {m.algo.name for m in model.modules() if hasattr(m, "algo")} == {"Native"}


def test_batch_equals_scenes_alone_and_keeps_input_order() -> None:
    torch.manual_seed(1)
    model = SparseUNet().eval()  # eval: BN uses running statistics, so scenes do not interact
    a, b = room_voxels(2), room_voxels(3, size=32, n=4000)
    fa, fb = torch.randn(a.shape[0], 6), torch.randn(b.shape[0], 6)
    with torch.no_grad():
        both = model(torch.cat([fa, fb]), batch_of(a, b), SHAPE, 2)
        alone_a = model(fa, batch_of(a), SHAPE, 1)
        alone_b = model(fb, batch_of(b), SHAPE, 1)
        perm = torch.randperm(a.shape[0])
        permuted = model(fa[perm], batch_of(a[perm]), SHAPE, 1)
    torch.testing.assert_close(both[: a.shape[0]], alone_a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both[a.shape[0]:], alone_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(permuted, alone_a[perm], rtol=1e-4, atol=1e-5)


def test_rejects_bad_inputs() -> None:
    model = SparseUNet(levels=2)
    coords = batch_of(room_voxels(0, size=16, n=400))
    feats = torch.randn(coords.shape[0], 6)
    with pytest.raises(ValueError, match="voxel_feats"):
        model(feats[:, :3], coords, SHAPE, 1)
    with pytest.raises(ValueError, match="must lie in"):
        model(feats, coords, (8, 8, 8), 1)
    with pytest.raises(ValueError, match="must lie in"):
        model(feats, coords + torch.tensor([1, 0, 0, 0], dtype=torch.int32), SHAPE, 1)


class _Parent(nn.Module):
    def __init__(self, frozen: SparseUNet) -> None:
        super().__init__()
        self.backbone = frozen
        self.head = nn.Linear(32, 1)


def test_frozen_stays_in_eval_and_keeps_statistics() -> None:
    parent = _Parent(SparseUNet(levels=2, frozen=True))
    parent.train()
    assert parent.head.training
    assert not any(m.training for m in parent.backbone.modules())
    assert not any(p.requires_grad for p in parent.backbone.parameters())
    before = {k: v.clone() for k, v in parent.backbone.state_dict().items()}
    coords = batch_of(room_voxels(4, size=16, n=800))
    out = parent.backbone(torch.randn(coords.shape[0], 6), coords, SHAPE, 1)
    assert not out.requires_grad
    after = parent.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Parity with the originals (D6): frozen weights, but train() reaches the BatchNorms again.
    parent.backbone.freeze(keep_eval=False)
    parent.train()
    assert parent.backbone.training and parent.backbone.output_layer[0].training
    parent.backbone.unfreeze()
    assert all(p.requires_grad for p in parent.backbone.parameters())


def test_checkpoint_round_trip_is_exact(tmp_path) -> None:
    src = SparseUNet()
    for p in src.parameters():
        nn.init.normal_(p)
    for m in src.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    path = tmp_path / "unet.pth"
    torch.save({"net": src.state_dict(), "epoch": 3}, path)
    dst = SparseUNet()
    report = load_state_dict_report(dst, path)
    assert report.ok and len(report.loaded) == len(src.state_dict())
    assert all(torch.equal(v, dst.state_dict()[k]) for k, v in src.state_dict().items())
    assert "loaded 274, missing 0" in report.summary()


def test_checkpoint_report_missing_unexpected_shape() -> None:
    state = SparseUNet().state_dict()
    state.pop("output_layer.0.bias")
    state["decoder.query"] = torch.zeros(4)
    state["input_conv.0.weight"] = torch.zeros(32, 3, 3, 3, 3)
    target = SparseUNet()
    before = target.input_conv[0].weight.detach().clone()
    with pytest.raises(CheckpointMismatchError) as info:
        load_state_dict_report(target, state)
    rep = info.value.report
    assert rep.missing == ["output_layer.0.bias"] and rep.unexpected == ["decoder.query"]
    assert rep.shape_mismatch == [("input_conv.0.weight", (32, 3, 3, 3, 3), (32, 3, 3, 3, 6))]
    assert "output_layer.0.bias" in str(info.value)
    assert torch.equal(target.input_conv[0].weight, before)  # strict failure loads nothing
    rep = load_state_dict_report(target, state, strict=False)
    assert not rep.ok and len(rep.loaded) == 274 - 2
    assert torch.equal(target.unet.conv[2].weight, state["unet.conv.2.weight"])


def test_checkpoint_prefix_filter_and_spconv1_layout() -> None:
    unet = SparseUNet(levels=2).state_dict()
    full = {**{k: v + 1 if v.is_floating_point() else v for k, v in unet.items()},
            "text_encoder.embeddings.weight": torch.zeros(3, 3), "decoder.layers.0.weight": torch.zeros(2)}
    target = SparseUNet(levels=2)
    with pytest.raises(CheckpointMismatchError):
        load_state_dict_report(target, {"state_dict": full})
    rep = load_state_dict_report(target, {"state_dict": full}, prefix_map=SPARSE_UNET_PREFIXES)
    assert rep.ok and sorted(rep.ignored) == ["decoder.layers.0.weight", "text_encoder.embeddings.weight"]
    assert torch.equal(target.output_layer[0].weight, full["output_layer.0.weight"])
    # Under a parent, with a DDP prefix on the file side.
    parent = _Parent(SparseUNet(levels=2))
    ddp = {f"module.{k}": v for k, v in full.items()}
    rep = load_state_dict_report(parent.backbone, ddp, prefix_map={f"module.{p}": p for p in SPARSE_UNET_PREFIXES})
    assert rep.ok and len(rep.ignored) == 2
    # spconv 1.x stored [k, k, k, in, out]; the converter restores [out, k, k, k, in].
    old = {k: (v.permute(1, 2, 3, 4, 0) if v.ndim == 5 else v) for k, v in unet.items()}
    assert all(torch.equal(spconv1_to_spconv2(old)[k], v) for k, v in unet.items())
    rep = load_state_dict_report(SparseUNet(levels=2), old, strict=False)
    assert rep.shape_mismatch and load_state_dict_report(SparseUNet(levels=2), old, spconv1_layout=True).ok


# ---------------------------------------------------------------------- CUDA (skipped without a device)
@pytest.mark.gpu
def test_cuda_implicit_gemm_matches_cpu_native() -> None:
    torch.manual_seed(5)
    cpu = SparseUNet().eval()
    for m in cpu.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    gpu = copy.deepcopy(cpu).cuda()
    coords = batch_of(room_voxels(6), room_voxels(7))
    feats = torch.randn(coords.shape[0], 6)
    with torch.no_grad():
        want = cpu(feats, coords, SHAPE, 2)
        got = gpu(feats.cuda(), coords.cuda(), SHAPE, 2)
    assert all(m.algo.name != "Native" for m in gpu.modules() if hasattr(m, "algo"))
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-3)
    # Backward on CUDA, then the same module back on CPU switches to Native again.
    gpu.train()
    out = gpu(feats.cuda(), coords.cuda(), SHAPE, 2)
    out.square().mean().backward()
    assert torch.isfinite(gpu.input_conv[0].weight.grad).all()
    back = gpu.cpu().eval()
    with torch.no_grad():
        assert torch.isfinite(back(feats, coords, SHAPE, 2)).all()


@pytest.mark.gpu
def test_cuda_fp16_autocast_close_to_fp32() -> None:
    torch.manual_seed(6)
    model = SparseUNet().cuda().eval()
    coords = batch_of(room_voxels(8)).cuda()
    feats = torch.randn(coords.shape[0], 6, device="cuda")
    with torch.no_grad():
        ref = model(feats, coords, SHAPE, 1)
        with torch.autocast("cuda", dtype=torch.float16):
            half = model(feats, coords, SHAPE, 1)
    assert torch.isfinite(half).all()
    rel = (half.float() - ref).norm() / ref.norm()
    assert rel < 2e-2, f"fp16 relative error {rel:.4f}"
