"""``grounding bench backbone --mask-iou``: do compressed-encoder masks agree with the uncompressed encoder's own?

The issue's bar: mask IoU >= 0.9 against the uncompressed encoder's predictions on generated images, training-free
ToMe at 50 % from block 2, SAM ViT-B at 1024 px. Two ways to get masks from trained weights:

- :func:`sam_mask_agreement` (``--sam-checkpoint PATH``): an official SAM checkpoint; SAM's prompt encoder and mask
  decoder are prompted with the referred object's box on every generated validation picture (letterboxed to the
  encoder's size); masks = logits > 0 (SAM's threshold), compared compressed vs dense;
- :func:`dit_mask_agreement` (``--dit-checkpoint``; default the tiny DIT trained on data/synthetic2d under
  outputs/dit_b when present): the DIT run is rebuilt from its saved config, its encoder gets the schedule, and
  masks = sigmoid(logits) >= the run's postprocess threshold, on the canvas pixels of the image (padding excluded).

Both report the mean and the p10 of the per-sample IoU, and (DIT) the mIoU of each against the ground truth and the
measured encoder speed-up on the same batches: the image encoder's wall-clock time (text slots included, the
run's canvas and the evaluation batch size), summed over the validation batches for each arm, the two arms
interleaved batch by batch with their order alternating (so slow drifts of the machine hit both alike).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grounding.backbone.compression import BackboneCompression

__all__ = ["dit_mask_agreement", "mask_iou", "sam_mask_agreement"]


def mask_iou(a: Tensor, b: Tensor, valid: Tensor | None = None) -> Tensor:
    """(B,) IoU of two (B, H, W) bool masks inside ``valid`` (B, H, W); two empty masks score 1."""
    if valid is not None:
        a, b = a & valid, b & valid
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


def _summary(ious: list[Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    v = torch.cat(ious) if ious else torch.zeros(0)
    return {"samples": int(v.numel()), "mean_iou": float(v.mean()) if v.numel() else float("nan"),
            "p10_iou": float(v.quantile(0.1)) if v.numel() else float("nan"), **extra}


def _val_batches(root: str | Path, size: int, batch_size: int, limit: int | None) -> Iterator[Any]:
    from torch.utils.data import DataLoader

    from datasets.refimage import refer_image_dataset
    from datasets.transforms.image2d import Letterbox

    ds = refer_image_dataset(root, "synthetic2d", "val", Letterbox(size=size), limit=limit)
    return iter(DataLoader(ds, batch_size=batch_size, collate_fn=ds.collate))


class _EncoderClock:
    """Wall-clock seconds spent inside ``module.forward``, summed per arm (``arm`` names the one running)."""

    def __init__(self, module: nn.Module) -> None:
        self.arm = "dense"
        self.seconds: dict[str, float] = {}
        self._start = 0.0
        self._hooks = [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._leave)]

    def _enter(self, *_: Any) -> None:
        self._start = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        self.seconds[self.arm] = self.seconds.get(self.arm, 0.0) + time.perf_counter() - self._start

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()


def dit_mask_agreement(run_dir: str | Path, compress: BackboneCompression, limit: int | None = None,
                       batch_size: int = 32) -> dict[str, Any]:
    """Compressed vs uncompressed predictions of a trained DIT run (``<run_dir>/config.yaml`` + last.ckpt)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    model = instantiate(cfg.task.model).eval()
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    result = model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
                                   strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("text_encoder.")]  # frozen: not saved
    if missing or result.unexpected_keys:
        raise RuntimeError(f"{run_dir}: checkpoint does not fit the model: missing {missing[:5]}, unexpected "
                           f"{result.unexpected_keys[:5]}")
    threshold = float(cfg.task.postprocess.get("threshold", 0.5))
    logit_t = torch.logit(torch.tensor(threshold)).item()
    canvas = int(cfg.data.source.canvas)
    vit = model.image_encoder
    schedule = f"{compress.method} {compress.ratio:g} at blocks {list(compress.blocks)}"
    if vit.compression is None:
        vit.set_compression(compress)
    else:
        # A run trained with a schedule keeps its own: learned compressors (pool queries, a learned scorer) carry
        # trained parameters that a schedule built from the command line would replace with fresh ones. Its
        # "uncompressed" arm is then the same weights with the schedule removed.
        own = vit.compression
        schedule = f"the run's own trained {own.method} {own.ratio:g} at blocks {list(own.blocks)}"
    comp = vit.compression
    agree: list[Tensor] = []
    gt_iou: dict[str, list[Tensor]] = {"dense": [], "compressed": []}
    clock = _EncoderClock(vit)
    try:
        with torch.inference_mode():
            model(next(_val_batches(cfg.data.root, canvas, batch_size, 1)))  # warm-up (text cache, allocator)
            clock.seconds = {"dense": 0.0, "compressed": 0.0}
            for i, batch in enumerate(_val_batches(cfg.data.root, canvas, batch_size, limit)):
                preds = {}
                for name in ("dense", "compressed") if i % 2 == 0 else ("compressed", "dense"):
                    clock.arm = name
                    vit.compression = comp if name == "compressed" else None
                    preds[name] = model(batch).pred_logits >= logit_t
                    gt_iou[name].append(mask_iou(preds[name], batch.gt_masks >= 0.5, batch.valid))
                agree.append(mask_iou(preds["dense"], preds["compressed"], batch.valid))
    finally:
        clock.remove()
    vit.compression = comp
    seconds = clock.seconds
    tokens = [round(t.tokens) for t in comp.trace]
    dense_miou = float(torch.cat(gt_iou["dense"]).mean())
    comp_miou = float(torch.cat(gt_iou["compressed"]).mean())
    return _summary(agree, {"source": f"DIT run {run_dir} (canvas {canvas} px, {vit.patch_size} px patches; "
                                      f"schedule: {schedule})",
                            "tokens_per_block": tokens, "miou_dense": 100 * dense_miou,
                            "miou_compressed": 100 * comp_miou,
                            "retained": 100 * comp_miou / dense_miou if dense_miou > 0 else float("nan"),
                            "encoder_seconds": seconds, "batch_size": batch_size,
                            "encoder_speedup": seconds["dense"] / max(seconds["compressed"], 1e-9)})


class _Sam(nn.Module):
    """Container with SAM's three key prefixes, so an official checkpoint loads by its own names."""

    def __init__(self, model: str) -> None:
        super().__init__()
        from grounding.backbone.sam_vit import TextAwareViT
        from segmentation.mask_decoder import build_sam_mask_decoder, build_sam_prompt_encoder

        self.image_encoder = TextAwareViT.from_preset(model, global_all_blocks=False, text_gate=False)
        self.prompt_encoder = build_sam_prompt_encoder()
        self.mask_decoder = build_sam_mask_decoder()


def sam_mask_agreement(checkpoint: str | Path, compress: BackboneCompression, model: str = "vit_b",
                       image_size: int = 1024, data_root: str | Path = "data/synthetic2d",
                       limit: int | None = 32) -> dict[str, Any]:
    """Box-prompted SAM masks with the compressed vs the uncompressed encoder on generated validation pictures."""
    from grounding.backbone.checkpoint import load_sam_weights

    sam = _Sam(model).eval()
    report = load_sam_weights(sam, str(checkpoint))
    vit = sam.image_encoder
    vit.set_compression(compress)
    comp = vit.compression
    agree: list[Tensor] = []
    pe = sam.prompt_encoder
    with torch.inference_mode():
        for batch in _val_batches(data_root, image_size, 1, limit):
            scale = batch.resized_hw[:, 0].float() / batch.original_hw[:, 0].float()
            x, y, w, h = batch.boxes.unbind(-1)
            top, left = batch.pad_tl[:, 0].float(), batch.pad_tl[:, 1].float()
            boxes = torch.stack([x * scale + left, y * scale + top, (x + w) * scale + left, (y + h) * scale + top], -1)
            # SAM's prompt encoder normalises coordinates by its 1024 px input size.
            sparse, _ = pe(points=None, boxes=boxes * (1024.0 / image_size), masks=None)
            masks = {}
            for name in ("dense", "compressed"):
                vit.compression = comp if name == "compressed" else None
                emb = vit(batch.images)
                hw = tuple(emb.shape[-2:])
                dense_prompt = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(emb.shape[0], -1, *hw)
                low, _ = sam.mask_decoder.predict_masks(emb, pe.pe_layer(hw).unsqueeze(0), sparse, dense_prompt)
                up = torch.nn.functional.interpolate(low[:, :1], size=batch.images.shape[-2:], mode="bilinear",
                                                     align_corners=False)[:, 0]
                masks[name] = up > 0.0
            agree.append(mask_iou(masks["dense"], masks["compressed"], batch.valid))
    vit.compression = comp
    return _summary(agree, {"source": f"SAM {model} checkpoint {checkpoint} ({report.source}), box prompts, "
                                      f"{image_size} px", "tokens_per_block": [round(t.tokens) for t in comp.trace]})
