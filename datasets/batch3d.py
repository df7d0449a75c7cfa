"""``ReferBatch3D``: the one batch dataclass of the 3D referring tasks (data spec §10.2).

Points of the batch's scenes are concatenated scene after scene (no padding) and located by offsets.
Descriptions are never given a copy of their scene: ``desc_scene`` says which scene a description
belongs to, and scene-level tensors (superpoint features, centres) are indexed or broadcast with it.

Frames: ``coord`` / ``sp_center`` / ``gt_center`` are metres (augmented, centred, z-up);
``xyz`` / ``voxel_coords`` / ``spatial_shape`` are voxel units (1 voxel = 1 / scale metres).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from datasets.records import ReferRecord
from datasets.transforms.voxelize import voxelize

SP_FIELDS = ("superpoint", "sp_center", "sp_ins_label", "gt_spmask", "gt_center", "sp_ref_mask")


def _offsets(sizes: Sequence[int]) -> Tensor:
    """(len + 1,) int64 exclusive prefix sums: ``[0, s0, s0 + s1, ...]``."""
    out = torch.zeros(len(sizes) + 1, dtype=torch.long)
    if sizes:
        out[1:] = torch.cumsum(torch.as_tensor(list(sizes), dtype=torch.long), 0)
    return out


@dataclass
class ReferBatch3D:
    """B scenes, P points, V voxels, S superpoints (S_max the largest per scene) and D descriptions.

    Points (scene b owns rows ``point_offsets[b]:point_offsets[b + 1]``):
        coord: (P, 3) float32 ``xyz_middle``, metres.
        xyz: (P, 3) float32 voxel units, >= 0 (what was voxelised).
        feat: (P, 6) float32 ``[colour (shifted rgb / 127.5 - 1), xyz_middle]``.
        instance: (P,) int64 object id or -1 (never renumbered); semantic: (P,) int64 ScanNet-20 or -100.
        semantic_fine: (P,) int64 NYU40 id - 1 (0..39) of the point's instance, -100 where unknown; None unless
            the dataset was given a label map (:class:`~datasets.refer3d.Refer3DDataset`).
        point_index: (P,) int64 index of each point in its prepared scene (original point order).
        point_scene: (P,) int64 scene index of each point; point_offsets: (B + 1,) int64.
    Voxels (see :class:`~datasets.transforms.voxelize.Voxels`):
        voxel_coords: (V, 4) int32 ``[scene, x, y, z]``; voxel_feats: (V, 6) mean of ``feat``;
        p2v: (P,) int64; v2p_index: (P,) int64 and v2p_offsets: (V + 1,) int64 (CSR voxel -> points);
        spatial_shape: (3,) ints, per-axis max + 1, clipped below at 128.
    Superpoints (all None when the scenes have none):
        superpoint: (P,) int64 global id (offset per scene); sp_offsets: (B + 1,) int64;
        sp_center: (S, 3) float32 metres (mean ``xyz_middle``); sp_ins_label: (S,) int64 (§8.3, MDIN).
    Scenes: scene_ids (B), num_original_points (B), desc_offsets (B + 1,) int64 (descriptions are grouped
        by scene, in item order).
    Descriptions:
        desc_scene: (D,) int64 scene index; records, texts, object_ids, groups, eval_types: lists of D;
        gt_spmask: (D, S_max) bool, superpoint s of the description's scene is a target when more than half
            its points are (§8.2, strict); columns >= that scene's S are False padding;
        sp_ref_mask: (D, S_max) float32 text relevance (§8.5), 0 in padding;
        gt_center: (D, 3) float32 metres, mean of the positive superpoints' centres, -1000 when none (§8.4).
    """

    coord: Tensor
    xyz: Tensor
    feat: Tensor
    instance: Tensor
    semantic: Tensor
    point_index: Tensor
    point_scene: Tensor
    point_offsets: Tensor
    voxel_coords: Tensor
    voxel_feats: Tensor
    p2v: Tensor
    v2p_index: Tensor
    v2p_offsets: Tensor
    spatial_shape: tuple[int, int, int]
    superpoint: Tensor | None
    sp_offsets: Tensor | None
    sp_center: Tensor | None
    sp_ins_label: Tensor | None
    scene_ids: list[str]
    num_original_points: list[int]
    desc_offsets: Tensor
    desc_scene: Tensor
    records: list[ReferRecord]
    texts: list[str]
    object_ids: list[tuple[int, ...]]
    groups: list[str | None]
    eval_types: list[str | None]
    gt_spmask: Tensor | None
    sp_ref_mask: Tensor | None
    gt_center: Tensor | None
    semantic_fine: Tensor | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def collate(cls, items: Sequence[dict[str, Any]]) -> ReferBatch3D:
        """Batch items of :class:`~datasets.refer3d.Refer3DDataset` (one scene + its descriptions each).

        Item keys: ``scene_id``, ``num_original_points``, ``records`` (D_b), point tensors ``xyz``,
        ``xyz_middle``, ``color``, ``semantic``, ``instance``, ``point_index`` (N_b rows), optionally
        ``semantic_fine`` (N_b,) (kept only when every item has it), and, with
        superpoints, ``superpoint`` (N_b,), ``sp_center`` (S_b, 3), ``sp_ins_label`` (S_b,),
        ``gt_spmask`` (D_b, S_b), ``sp_ref_mask`` (D_b, S_b), ``gt_center`` (D_b, 3).
        """
        if not items:
            raise ValueError("cannot collate an empty list of items")
        with_sp = ["superpoint" in it for it in items]
        if any(with_sp) != all(with_sp):
            raise ValueError("a batch mixes scenes with and without superpoints "
                             f"({[it['scene_id'] for it in items]})")
        n = [int(it["xyz"].shape[0]) for it in items]
        point_offsets = _offsets(n)
        point_scene = torch.repeat_interleave(torch.arange(len(items)), torch.as_tensor(n, dtype=torch.long))
        coord = torch.cat([it["xyz_middle"].float() for it in items])
        xyz = torch.cat([it["xyz"].float() for it in items])
        feat = torch.cat([torch.cat([it["color"].float() for it in items]), coord], 1)
        vox = voxelize(xyz, feat, point_scene)
        records = [rec for it in items for rec in it["records"]]
        d = [len(it["records"]) for it in items]
        sp: dict[str, Tensor | None] = dict.fromkeys(SP_FIELDS)
        sp_offsets = None
        if all(with_sp):
            s = [int(it["sp_center"].shape[0]) for it in items]
            sp_offsets = _offsets(s)
            s_max = max(s)
            sp["superpoint"] = torch.cat([it["superpoint"] + sp_offsets[b] for b, it in enumerate(items)])
            sp["sp_center"] = torch.cat([it["sp_center"] for it in items])
            sp["sp_ins_label"] = torch.cat([it["sp_ins_label"] for it in items])
            sp["gt_spmask"] = torch.cat([_pad_cols(it["gt_spmask"], s_max) for it in items])
            sp["sp_ref_mask"] = torch.cat([_pad_cols(it["sp_ref_mask"], s_max) for it in items])
            sp["gt_center"] = torch.cat([it["gt_center"] for it in items])
        return cls(
            coord=coord, xyz=xyz, feat=feat, instance=torch.cat([it["instance"] for it in items]),
            semantic=torch.cat([it["semantic"] for it in items]),
            point_index=torch.cat([it["point_index"] for it in items]), point_scene=point_scene,
            point_offsets=point_offsets, voxel_coords=vox.coords, voxel_feats=vox.feats, p2v=vox.p2v,
            v2p_index=vox.v2p_index, v2p_offsets=vox.v2p_offsets, spatial_shape=vox.spatial_shape,
            superpoint=sp["superpoint"], sp_offsets=sp_offsets, sp_center=sp["sp_center"],
            sp_ins_label=sp["sp_ins_label"], scene_ids=[it["scene_id"] for it in items],
            num_original_points=[int(it["num_original_points"]) for it in items], desc_offsets=_offsets(d),
            desc_scene=torch.repeat_interleave(torch.arange(len(items)), torch.as_tensor(d, dtype=torch.long)),
            records=records, texts=[r.description for r in records], object_ids=[r.object_ids for r in records],
            groups=[r.group for r in records], eval_types=[r.eval_type for r in records],
            gt_spmask=sp["gt_spmask"], sp_ref_mask=sp["sp_ref_mask"], gt_center=sp["gt_center"],
            semantic_fine=(torch.cat([it["semantic_fine"] for it in items])
                           if all("semantic_fine" in it for it in items) else None))

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ReferBatch3D:
        """A copy with every tensor on ``device`` (lists, strings and records are shared)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=non_blocking)
        return ReferBatch3D(**moved)

    def pin_memory(self) -> ReferBatch3D:
        """A copy with every tensor in pinned memory (called by ``DataLoader(pin_memory=True)``)."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.pin_memory()
        return ReferBatch3D(**moved)

    # ------------------------------------------------------------------ sizes and views
    def __len__(self) -> int:
        """Number of samples = descriptions (what the engine logs and the evaluator counts)."""
        return len(self.records)

    @property
    def sample_ids(self) -> list[str]:
        return [r.sample_id for r in self.records]

    @property
    def num_scenes(self) -> int:
        return len(self.scene_ids)

    @property
    def scenes_len(self) -> Tensor:
        """(B,) int64 descriptions per scene (the original's ``scenes_len``)."""
        return self.desc_offsets[1:] - self.desc_offsets[:-1]

    @property
    def sp_counts(self) -> Tensor:
        """(B,) int64 superpoints per scene."""
        if self.sp_offsets is None:
            raise ValueError("this batch has no superpoints")
        return self.sp_offsets[1:] - self.sp_offsets[:-1]

    def sp_padding_mask(self) -> Tensor:
        """(B, S_max) bool, True on padding columns (for per-scene superpoint tensors padded to S_max)."""
        counts = self.sp_counts
        s_max = int(counts.max()) if counts.numel() else 0
        return torch.arange(s_max, device=counts.device)[None, :] >= counts[:, None]

    def point_slice(self, scene: int) -> slice:
        """Rows of scene ``scene`` in every per-point tensor."""
        return slice(int(self.point_offsets[scene]), int(self.point_offsets[scene + 1]))

    @property
    def gt_pmask(self) -> list[Tensor]:
        """Per description, (P_b,) bool over its scene's points in batch order: ``instance`` in ``object_ids``
        (§8.1; all False for a zero-target description). Computed on demand from ``instance`` on the batch's
        device, so items never carry D copies of a scene-sized mask."""
        out = []
        for j, ids in enumerate(self.object_ids):
            inst = self.instance[self.point_slice(int(self.desc_scene[j]))]
            out.append(torch.isin(inst, torch.as_tensor(ids, dtype=inst.dtype, device=inst.device)))
        return out

    def to_original_points(self, mask: Tensor, scene: int, fill: bool = False) -> Tensor:
        """Scatter a (P_b,) per-point tensor of scene ``scene`` to its prepared scene's original point order.

        Returns (N_original,) with ``fill`` on points the training subsample dropped. At validation all
        points are kept in order, so this is the identity.
        """
        out = torch.full((self.num_original_points[scene],), fill, dtype=mask.dtype, device=mask.device)
        out[self.point_index[self.point_slice(scene)].to(mask.device)] = mask
        return out

    # ------------------------------------------------------------------ evaluator protocol
    def eval_gt_masks(self) -> list[Tensor]:
        """Ground-truth point masks, one per description, over that scene's points in batch point order
        (= the original order with the validation transform, which keeps every point)."""
        return self.gt_pmask

    def eval_groups(self) -> list[str] | None:
        """ScanRefer unique/multiple or Multi3DRefer eval_type per description; None if no record has one."""
        if all(g is None for g in self.groups):
            return None
        return [g if g is not None else "" for g in self.groups]


def _pad_cols(x: Tensor, width: int) -> Tensor:
    """Pad a (D, S) tensor with zeros (False) on the right to (D, width)."""
    if x.shape[1] == width:
        return x
    out = x.new_zeros((x.shape[0], width))
    out[:, :x.shape[1]] = x
    return out
