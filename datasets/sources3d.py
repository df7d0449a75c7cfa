"""Dataset factories for hydra configs: annotation file + prepared scenes -> ``Refer3DDataset``.

Configs name these functions as ``_target_`` (``configs/data/*.yaml``), so a data config is only
paths and numbers; reading and validating the annotation files stays in the readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from datasets.multi3drefer import load_multi3drefer
from datasets.refer3d import Refer3DDataset, SceneTransform
from datasets.scanrefer import load_scanrefer


def _restrict(records: list, scene_ids: Sequence[str] | None, limit: int | None) -> list:
    if scene_ids is not None:
        keep = set(scene_ids)
        records = [r for r in records if r.scene_id in keep]
    return records if limit is None else records[:limit]


def scanrefer_dataset(scenes_dir: str | Path, annotations: str | Path, transform: SceneTransform,
                      max_descriptions: int, label_map: str | Path | None = None, seed: int = 0,
                      scene_ids: Sequence[str] | None = None, limit: int | None = None) -> Refer3DDataset:
    """ScanRefer-format descriptions (real or generated) over prepared scenes.

    Args:
        scenes_dir: prepared scene folders (``grounding prepare ...``).
        annotations: ``ScanRefer_filtered_<split>.json``.
        transform: ``TrainTransform()`` or ``ValTransform()``.
        max_descriptions: K descriptions per item (RG-SAN: 16 train, 64 val).
        label_map: ``scannetv2-labels.combined.tsv``; when given, records carry ScanRefer's
            unique/multiple flag and evaluation reports the two groups.
        scene_ids: keep only these scenes (e.g. a held-out slice for model selection).
        limit: keep only the first ``limit`` records (quick runs).
    """
    records = _restrict(load_scanrefer(annotations, label_map=label_map), scene_ids, limit)
    return Refer3DDataset(scenes_dir, records, transform, max_descriptions, seed=seed)


def multi3drefer_dataset(scenes_dir: str | Path, annotations: str | Path, transform: SceneTransform,
                         max_descriptions: int, seed: int = 0, scene_ids: Sequence[str] | None = None,
                         limit: int | None = None, label_map: str | Path | None = None) -> Refer3DDataset:
    """Multi3DRefer-format descriptions (zero, one or many targets) over prepared scenes (``label_map``: see
    :class:`Refer3DDataset`)."""
    records = _restrict(list(load_multi3drefer(annotations)), scene_ids, limit)
    return Refer3DDataset(scenes_dir, records, transform, max_descriptions, seed=seed, label_map=label_map)
