"""TextAwareViT with a token-compression schedule: identity, restore, windows, rel-pos, DIT, FLOPs, bench."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from vit_helpers import randomise

from grounding.backbone import BackboneCompression, TextAwareViT
from grounding.backbone.compression import BlockTrace, _with_text
from grounding.backbone.flops import block_flops, encoder_flops
from grounding.backbone.token_attention import gathered_rel_pos_bias, rel_table, token_block
from grounding.backbone.token_geometry import GeometryCache
from grounding.compress import Identity, TokenMerge
from grounding.tokens import TokenSet


def tiny(windows: bool, **kw) -> TextAwareViT:
    """The tiny preset; ``windows`` = SAM's window/global layout (retrieval), else all global (DIT)."""
    torch.manual_seed(0)
    vit = TextAwareViT.from_preset("tiny", global_all_blocks=not windows, **kw).eval()
    randomise(vit)
    return vit


def text_hook(b: int, t: int, c: int):
    g = torch.Generator().manual_seed(1)
    slots = torch.randn(b, t, c, generator=g)
    return lambda i, prev: slots if prev is None else prev  # E-DIT "paper": block outputs propagate


def run(vit: TextAwareViT, x: torch.Tensor, comp: BackboneCompression | None, text: bool = False) -> torch.Tensor:
    vit.set_compression(comp)
    kw = {}
    if text:
        mask = torch.ones(x.shape[0], 5, dtype=torch.bool)
        mask[0, 3:] = False
        kw = {"text_hook": text_hook(x.shape[0], 5, vit.embed_dim), "text_mask": mask}
    with torch.no_grad():
        return vit(x, **kw)


IMG = torch.randn(2, 3, 192, 192, generator=torch.Generator().manual_seed(0))  # 12 x 12 grid: padded 8 x 8 windows


@pytest.mark.parametrize("windows,text", [(True, False), (False, True)])
def test_none_and_zero_ratio_are_bit_identical(windows, text):
    vit = tiny(windows)
    ref = run(vit, IMG, None, text)
    assert torch.equal(run(vit, IMG, Identity(), text), ref)  # compress=none
    assert vit.compression is None
    for method in ("tome", "prune"):
        comp = BackboneCompression(method, 0.0, start_block=1)
        assert torch.equal(run(vit, IMG, comp, text), ref), method
        assert all(t.mode == "dense" for t in comp.trace)


@pytest.mark.parametrize("windows,text", [(True, False), (False, True)])
@pytest.mark.parametrize("method", ["tome", "prune", "pool"])
def test_every_compressor_runs_and_restores_the_dense_shape(windows, text, method):
    vit = tiny(windows)
    ref = run(vit, IMG, None, text)
    comp = BackboneCompression(method, 0.5, start_block=1)
    out = run(vit, IMG, comp, text)
    assert out.shape == ref.shape == (2, 256, 12, 12)
    assert torch.isfinite(out).all()
    kept = [t.tokens for t in comp.trace]
    assert kept[0] == 144 and all(k < 144 for k in kept[1:]), kept
    assert [t.mode for t in comp.trace] == ["dense", "gather", "gather", "gather"]


def test_mask_mode_with_nothing_dropped_equals_dense_windows_pad_cells_and_text():
    """Gathered rel-pos, per-window packing with SAM's pad cells folded into one key, text slots: all exact."""
    for windows, text in [(True, False), (False, True), (True, True)]:
        vit = tiny(windows)
        ref = run(vit, IMG, None, text)
        comp = BackboneCompression("prune", 0.0, start_block=0, mode="mask", skip_identity=False)
        out = run(vit, IMG, comp, text)
        assert all(t.mode == "mask" for t in comp.trace)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


def test_gathered_rel_pos_equals_sams_grid_bias():
    vit = tiny(False)
    blk = vit.blocks[1]
    q = torch.randn(2, vit.num_heads, 6 * 5, vit.embed_dim // vit.num_heads)
    want = TextAwareViT._rel_pos_bias(blk, q, (6, 5))
    pos = TokenSet.from_grid(torch.zeros(2, 6, 5, 1)).pos
    got = gathered_rel_pos_bias(q, pos, pos, rel_table(blk.attn.rel_pos_h, 6), rel_table(blk.attn.rel_pos_w, 5))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gather_and_mask_modes_agree_on_kept_tokens():
    vit = tiny(True)
    outs = [run(vit, IMG, BackboneCompression("prune", 0.5, start_block=1, mode=m), False) for m in ("gather", "mask")]
    torch.testing.assert_close(outs[0], outs[1], atol=1e-4, rtol=1e-4)


def test_windowed_block_attends_only_within_each_window():
    vit = tiny(True)
    blk = vit.blocks[0]  # a window block (8 x 8)
    x = torch.randn(1, 12, 12, vit.embed_dim)
    ts = TokenSet.from_grid(x, window_size=8)
    keep = torch.arange(144) % 3 != 0  # a pruned set: windows of uneven sizes
    ts = TokenSet(x=ts.x[:, keep], valid=ts.valid[:, keep], pos=ts.pos[:, keep], size=ts.size[:, keep],
                  src_index=torch.zeros(1, 144, dtype=torch.long), window_id=ts.window_id[:, keep], grid=(12, 12))
    base, _, shape = token_block(vit, 0, blk, ts, None, None, True, True)
    x2 = ts.x.clone()
    x2[:, ts.window_id[0] == 0] += 1.0  # change only window 0
    moved, _, _ = token_block(vit, 0, blk, ts.with_x(x2), None, None, True, True)
    other = ts.window_id[0] != 0
    torch.testing.assert_close(moved[:, other], base[:, other], atol=1e-6, rtol=0)
    assert not torch.allclose(moved[:, ~other], base[:, ~other])
    assert shape["k"] == shape["q"] // 4 + 1  # 4 windows of L rows; + the folded pad-cell key


def _pruned_windows(vit: TextAwareViT, every: int) -> TokenSet:
    """A 12 x 12 grid in 8 x 8 windows (pad cells), every ``every``-th token removed: uneven windows."""
    ts = TokenSet.from_grid(torch.randn(1, 12, 12, vit.embed_dim), window_size=8)
    keep = torch.arange(144) % every != 0
    return TokenSet(x=ts.x[:, keep], valid=ts.valid[:, keep], pos=ts.pos[:, keep], size=ts.size[:, keep],
                    src_index=torch.zeros(1, 144, dtype=torch.long), window_id=ts.window_id[:, keep], grid=(12, 12))


def test_shared_geometry_cache_gives_the_same_blocks_and_follows_layout_changes():
    """One cache through several blocks (as forward_compressed passes it) equals a fresh computation per block,
    and a TokenSet with another layout (a compression event) is not served the old layout's values."""
    vit = tiny(True)
    cache = GeometryCache()
    for every in (3, 4):  # two layouts in turn through the same cache
        ts = _pruned_windows(vit, every)
        for i, blk in enumerate(vit.blocks):
            windowed = blk.window_size > 0
            shared, _, shape = token_block(vit, i, blk, ts, None, None, windowed, True, cache)
            fresh, _, fresh_shape = token_block(vit, i, blk, ts, None, None, windowed, True)
            assert torch.equal(shared, fresh) and shape == fresh_shape, (every, i)
            ts = ts.with_x(shared)  # same layout tensors: the next block reuses the cached geometry
    calls = []
    ts = _pruned_windows(vit, 3)
    assert cache.get(ts, "n", lambda: calls.append(1) or 1) == 1
    assert cache.get(ts.with_x(ts.x + 1), "n", lambda: calls.append(2) or 2) == 1  # features only: reused
    assert cache.get(_pruned_windows(vit, 3), "n", lambda: calls.append(3) or 3) == 3  # new layout tensors
    assert calls == [1, 3]


def test_rel_table_without_resampling_is_the_parameter_itself():
    blk = tiny(True).blocks[0]
    size = (blk.attn.rel_pos_h.shape[0] + 1) // 2
    table = rel_table(blk.attn.rel_pos_h, size)
    assert table is blk.attn.rel_pos_h
    from segment_anything.modeling.image_encoder import get_rel_pos

    r = get_rel_pos(size, size, blk.attn.rel_pos_h)  # R[i, j] = table[i - j + size - 1]
    i, j = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    assert torch.equal(r, table[i - j + size - 1])


def test_text_slots_are_protected_and_untouched():
    ts = TokenSet.from_grid(torch.randn(2, 6, 6, 8))
    text = torch.randn(2, 3, 8)
    joint = _with_text(ts, text)
    assert joint.protect[:, :3].all() and (joint.size[:, :3] == 0).all()
    merge = TokenMerge(ratio=0.5)
    out = merge.apply(merge.plan(joint), joint)
    assert torch.equal(out.x[:, :3], text)
    assert out.valid.sum(1).tolist() == [3 + 18, 3 + 18]
    out.check()


def test_dit_forward_with_a_compressed_backbone():
    from datasets.batch2d import ReferBatch2D
    from grounding.text.encoder import TextEncoder
    from segmentation import DIT
    from segmentation.mask_decoder import build_sam_mask_decoder

    torch.manual_seed(0)
    vit = TextAwareViT.from_preset("tiny", compress=BackboneCompression("tome", 0.5, start_block=2))
    model = DIT(vit, TextEncoder(), mode="edit", mask_decoder=build_sam_mask_decoder(mlp_dim=256))
    b, s = 2, 128
    batch = ReferBatch2D(images=torch.randn(b, 3, s, s), valid=torch.ones(b, s, s, dtype=torch.bool),
                         gt_masks=torch.zeros(b, s, s), pad_tl=torch.zeros(b, 2, dtype=torch.long),
                         resized_hw=torch.full((b, 2), s), original_hw=torch.full((b, 2), s),
                         gt_original=[torch.zeros(s, s, dtype=torch.bool)] * b, boxes=torch.zeros(b, 4),
                         texts=["the red box on the left", "a small dog"], sample_ids=["t/0", "t/1"],
                         image_ids=[0, 1], records=[None] * b)
    out = model(batch)
    assert out.pred_logits.shape == (2, 128, 128) and torch.isfinite(out.pred_logits).all()
    out.pred_logits.mean().backward()
    assert vit.blocks[3].mlp.lin1.weight.grad is not None
    assert [t.tokens for t in vit.compression.trace] == [64, 64, 32, 32]
    assert vit.new_parameter_prefixes[-1] == "compression."


def test_flop_counter_hand_computed_case():
    t = BlockTrace(block=0, tokens=4, rows=4, qkv_rows=6, attn_q=6, attn_k=3, table=5, text=2, compressor=7.0)
    f = block_flops(t, dim=2, mlp_ratio=4.0)
    # qkv 2*6*2*6 = 144, proj 2*6*2*2 = 48, MLP 4*4*2*8 = 256, text 2*(8*4 + 4*2*8) = 192
    assert f["linear"] == 144 + 48 + 256 + 192
    # QK^T + AV 4*6*3*2 = 144, image->text 4*6*2*2 = 96, text->[text; image] 4*2*(2+4)*2 = 96
    assert f["attention"] == 144 + 96 + 96
    assert f["relpos"] == 2 * 6 * 5 * 2
    assert f["total"] == 640 + 336 + 120 + 7


def test_dense_vit_b_at_1024_reproduces_the_spec_flops():
    with torch.device("meta"):
        vit = TextAwareViT.from_preset("vit_b", global_all_blocks=False, text_gate=False)
    f = encoder_flops(vit, (1024, 1024))
    assert round(f["total"] / 1e9, 1) == 972.1
    assert round(f["blocks"][2]["total"] / 1e9, 1) == 110.3 and round(f["blocks"][0]["total"] / 1e9, 1) == 64.9


def test_config_selects_a_backbone_schedule():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from grounding.cli.main import __file__ as cli_file

    configs = str(__import__("pathlib").Path(cli_file).parents[2] / "configs")
    with initialize_config_dir(config_dir=configs, version_base=None):
        cfg = compose("train", overrides=["experiment=retrieval_synthetic", "compress=tome", "compress.ratio=0.25",
                                          "compress.start_block=1"])
        vit = instantiate(cfg.model.net.backbone)
        assert vit.compression.blocks == (1,) and vit.compression.ratio == 0.25
        cfg = compose("train", overrides=["experiment=retrieval_synthetic"])
        assert instantiate(cfg.model.net.backbone).compression is None


def test_bench_backbone_command_runs_on_tiny():
    from grounding.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["bench", "backbone", "--image-size", "128", "--model", "tiny", "--repeats", "2"])
    text = buf.getvalue()
    assert rc == 0
    assert "| **total** |" in text and "speed-up: measured" in text and "randomly initialised" in text


def test_bench_backbone_bf16_protocol_and_p90():
    """The GPU protocol's pieces on the CPU: bf16 autocast, untimed warm-up runs, median and nearest-rank p90."""
    from grounding.bench.backbone import bench_backbone, format_backbone, p90

    assert p90([float(v) for v in range(10, 0, -1)]) == 9.0 and p90([5.0]) == 5.0 and p90([1.0, 2.0, 3.0]) == 3.0
    r = bench_backbone(128, "tome", 0.5, 2, "tiny", repeats=3, device="cpu", dtype="bfloat16", warmup=2)
    assert len(r["runs"]["dense"]) == len(r["runs"]["compressed"]) == 3
    assert r["p90"]["dense"] == max(r["runs"]["dense"]) and r["dtype"] == "bfloat16"
    text = format_backbone(r)
    assert "bfloat16" in text and "after 2 warm-up" in text and "p90" in text
    assert r["neck_cosine"] > 0.5  # bf16 outputs compared in float32: finite and related
    with pytest.raises(ValueError, match="dtype"):
        bench_backbone(128, model="tiny", dtype="float16")


def test_sam_mask_agreement_runs_from_a_checkpoint_file(tmp_path):
    """The --sam-checkpoint path, on a randomly initialised tiny SAM saved under SAM's key names."""
    from datasets.synthetic.images import generate_synthetic2d
    from grounding.bench.mask_iou import _Sam, sam_mask_agreement

    data = tmp_path / "synthetic2d"
    generate_synthetic2d(data, preset="tiny", seed=0)
    torch.manual_seed(0)
    torch.save(_Sam("tiny").state_dict(), tmp_path / "sam_tiny.pth")
    r = sam_mask_agreement(tmp_path / "sam_tiny.pth", BackboneCompression("tome", 0.5, start_block=2), "tiny", 128,
                           data, limit=2)
    assert r["samples"] == 2 and 0.0 <= r["mean_iou"] <= 1.0
    assert r["tokens_per_block"] == [64, 64, 32, 32]
