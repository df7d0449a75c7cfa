"""Plumbing shared by the 3D referring models (RG-SAN, MDIN): learning-rate groups and pretrained U-Net loading."""

from __future__ import annotations

import logging

from torch import nn

from pointcloud.checkpoint import SPARSE_UNET_PREFIXES, LoadReport, load_state_dict_report

log = logging.getLogger(__name__)


def scaled_param_groups(model: nn.Module, backbone_lr_mult: float, text_lr_mult: float) -> list[dict]:
    """Optimizer parameter groups with per-module learning-rate scales (rgsan-mdin spec §8).

    The engine's contract (``GroundingTask``): each group has ``params``, ``lr_scale`` (multiplied into the
    configured base lr) and a ``name`` for the learning-rate monitor. Parameters under the top-level ``backbone``
    get ``backbone_lr_mult``, under ``text_encoder`` ``text_lr_mult`` (absent when frozen), everything else 1.
    Only parameters with ``requires_grad``; empty groups are omitted.
    """
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "text_encoder": [], "decoder": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            top = name.split(".", 1)[0]
            groups[top if top in ("backbone", "text_encoder") else "decoder"].append(p)
    scale = {"backbone": backbone_lr_mult, "text_encoder": text_lr_mult, "decoder": 1.0}
    return [{"params": ps, "lr_scale": scale[k], "name": k} for k, ps in groups.items() if ps]


def load_unet_checkpoint(backbone: nn.Module, checkpoint: str | None, strict: bool = True,
                         owner: str = "model") -> LoadReport | None:
    """Load the U-Net keys (``input_conv.`` / ``unet.`` / ``output_layer.``) of an SPFormer-style checkpoint.

    With ``strict`` any missing, unexpected or mis-shaped U-Net key raises before anything is loaded. Returns the
    report (None without a checkpoint) and logs its summary.
    """
    if checkpoint is None:
        return None
    report = load_state_dict_report(backbone, checkpoint, prefix_map=SPARSE_UNET_PREFIXES, strict=strict)
    log.info("%s backbone: %s", owner, report.summary())
    return report
