"""Dataset of the 3D referring tasks (RG-SAN on ScanRefer, MDIN on Multi3DRes): data spec §8 and §10.1.

One item = one scene + a chunk of up to K of its descriptions. Records are stable-sorted by
``scene_id`` (file order kept inside a scene) and each scene's consecutive records are cut into chunks
of at most K; the chunking is fixed for the run and only the item order is shuffled by the sampler.

Randomness: item ``i`` in epoch ``e`` is transformed with ``numpy.random.default_rng([seed, e, i])``.
An item's augmentation therefore depends on nothing but (seed, epoch, index): it is reproducible,
independent of the worker that loads it, and no two workers share a stream (fixes the original's
``np.random.seed(1999)`` in the constructor, rgsan-mdin spec D14). The epoch lives in a shared-memory
tensor, so :meth:`Refer3DDataset.set_epoch` called in the main process also reaches persistent workers
(call it before the epoch's loader iterator is created).

Ground truth (§8) is computed after the transform, on the points that enter the network; see
:mod:`datasets.batch3d` for the batch built from the items.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.batch3d import ReferBatch3D
from datasets.errors import DataFormatError
from datasets.records import ReferRecord
from datasets.scannet.labels import (
    IGNORE_LABEL,
    NYU40_CLASSES,
    SCANNET20_NYU40_IDS,
    SCANREFER_CLASSES,
    read_label_tsv,
)
from datasets.scannet.scene import PreparedScene, instance_classes

SceneTransform = Callable[[PreparedScene, np.random.Generator], dict[str, np.ndarray]]  # -> pipeline.POINT_KEYS
NO_CENTER = -1000.0  # gt_center sentinel of RG-SAN for a description without target superpoints (§8.4)
NO_MAJORITY = 199  # sp_ins_label of a superpoint without a > 50 % instance (§8.3)
MENTION_EXCLUDED_NYU40 = (1, 2, 22)  # wall, floor, ceiling never count as mentioned (§8.5)

# ScanNet-20 id -> the ScanRefer class name a word must equal to "mention" it, or None (§8.5): the NYU40
# name when it is one of ScanRefer's 17 named classes; otherfurniture becomes "others", which never matches.
_MENTION_NAME: tuple[str | None, ...] = tuple(
    None if nyu in MENTION_EXCLUDED_NYU40 or NYU40_CLASSES[nyu - 1] not in SCANREFER_CLASSES[:-1]
    else NYU40_CLASSES[nyu - 1] for nyu in SCANNET20_NYU40_IDS)


def chunk_records(records: Sequence[ReferRecord], max_descriptions: int) -> list[tuple[str, tuple[ReferRecord, ...]]]:
    """Stable-sort by ``scene_id`` and cut each scene's consecutive records into chunks of <= K (§10.1)."""
    if max_descriptions < 1:
        raise ValueError(f"max_descriptions must be >= 1, got {max_descriptions}")
    by_scene: dict[str, list[ReferRecord]] = {}
    for rec in sorted(records, key=lambda r: r.scene_id):  # sorted() is stable
        by_scene.setdefault(rec.scene_id, []).append(rec)
    return [(scene, tuple(recs[i:i + max_descriptions]))
            for scene, recs in by_scene.items() for i in range(0, len(recs), max_descriptions)]


def superpoint_centers(xyz_middle: np.ndarray, superpoint: np.ndarray, num_sp: int) -> np.ndarray:
    """(S, 3) float32 mean ``xyz_middle`` (metres) of each superpoint's points (§8.4); 0 for an empty id."""
    counts = np.bincount(superpoint, minlength=num_sp).astype(np.float64)
    sums = np.stack([np.bincount(superpoint, weights=xyz_middle[:, a], minlength=num_sp) for a in range(3)], 1)
    return (sums / np.maximum(counts, 1.0)[:, None]).astype(np.float32)


class _PairTable:
    """Point counts of every (superpoint, instance) pair of one scene.

    Every per-description quantity of §8 is a sum over a superpoint's points of a value that depends only
    on the point's instance, so it is a sum over these pairs: about S pairs instead of N points, which
    keeps 64 descriptions of a 250k-point scene cheap.
    """

    def __init__(self, instance: np.ndarray, superpoint: np.ndarray, num_sp: int) -> None:
        self.num_sp = num_sp
        self.ids, self.first, inverse = np.unique(instance, return_index=True, return_inverse=True)
        n_ids = max(len(self.ids), 1)
        pairs, self.pair_count = np.unique(superpoint * n_ids + inverse.reshape(-1), return_counts=True)
        self.pair_sp, self.pair_inst = pairs // n_ids, pairs % n_ids
        self.sp_count = np.bincount(superpoint, minlength=num_sp)

    def sum_per_sp(self, value_per_instance: np.ndarray) -> np.ndarray:
        """(S,) float64 sum over each superpoint's points of ``value_per_instance[instance index]``."""
        weights = self.pair_count * value_per_instance[self.pair_inst].astype(np.float64)
        return np.bincount(self.pair_sp, weights=weights, minlength=self.num_sp)

    def majority_label(self) -> np.ndarray:
        """(S,) int64: the instance id holding > 50 % of the points, else :data:`NO_MAJORITY` (§8.3)."""
        out = np.full(self.num_sp, NO_MAJORITY, dtype=np.int64)
        win = 2 * self.pair_count > self.sp_count[self.pair_sp]  # at most one instance per superpoint passes
        out[self.pair_sp[win]] = self.ids[self.pair_inst[win]]
        return out


def superpoint_instance_label(instance: np.ndarray, superpoint: np.ndarray, num_sp: int) -> np.ndarray:
    """(S,) int64 MDIN superpoint instance label (§8.3): the instance id (-1 included) holding > 50 % of
    the superpoint's points, else :data:`NO_MAJORITY` (199)."""
    return _PairTable(instance, superpoint, num_sp).majority_label()


def instance_mention_names(ids: np.ndarray, first_semantic: np.ndarray) -> list[str | None]:
    """Per instance id, the word that mentions its class (§8.5), or None (unannotated, excluded class).

    The class is the ScanNet-20 label of the instance's first point (in the current point order).
    """
    return [_MENTION_NAME[int(s)] if i >= 0 and 0 <= s < len(_MENTION_NAME) else None
            for i, s in zip(ids, first_semantic)]


def description_words(record: ReferRecord) -> list[str]:
    """Words for the mention test: the file's tokens when present (ScanRefer), else the description split
    on whitespace (Multi3DRefer's normalised text). Exact string equality, as in the originals."""
    return list(record.tokens) if record.tokens is not None else record.description.split()


def description_targets(arrays: dict[str, np.ndarray], records: Sequence[ReferRecord]) -> dict[str, np.ndarray]:
    """Per-description superpoint ground truth of one transformed scene (§8.2, §8.3, §8.4, §8.5).

    Args:
        arrays: the transform's output (needs ``superpoint``, ``instance``, ``semantic``, ``xyz_middle``).
        records: the item's descriptions (D).

    Returns:
        ``sp_center`` (S, 3) float32 metres; ``sp_ins_label`` (S,) int64; ``gt_spmask`` (D, S) bool, strictly
        more than half of the superpoint's points are targets (compared in integers, so exactly one half is
        False); ``gt_center`` (D, 3) float32 metres, unweighted mean of the positive superpoints' centres,
        -1000 when there is none; ``sp_ref_mask`` (D, S) float32 in [0, 1]: per point 1 on targets, 0.5 on
        instances of a mentioned class, else 0, averaged per superpoint.
    """
    sp, inst, sem = arrays["superpoint"], arrays["instance"], arrays["semantic"]
    num_sp = int(sp.max()) + 1 if len(sp) else 0
    table = _PairTable(inst, sp, num_sp)
    centers = superpoint_centers(arrays["xyz_middle"], sp, num_sp)
    names = instance_mention_names(table.ids, sem[table.first])
    d = len(records)
    gt_spmask = np.zeros((d, num_sp), dtype=bool)
    gt_center = np.full((d, 3), NO_CENTER, dtype=np.float32)
    ref = np.zeros((d, num_sp), dtype=np.float32)
    denom = np.maximum(table.sp_count, 1).astype(np.float64)
    for j, rec in enumerate(records):
        is_target = np.isin(table.ids, np.asarray(rec.object_ids, dtype=np.int64))
        gt_spmask[j] = 2 * table.sum_per_sp(is_target) > table.sp_count  # integer-valued sums: exact
        if gt_spmask[j].any():
            gt_center[j] = centers[gt_spmask[j]].astype(np.float64).mean(0)
        words = set(description_words(rec))
        mentioned = np.array([n is not None and n in words for n in names], dtype=bool)
        value = np.where(is_target, 1.0, np.where(mentioned, 0.5, 0.0))
        ref[j] = table.sum_per_sp(value) / denom
    return {"sp_center": centers, "sp_ins_label": table.majority_label(),
            "gt_spmask": gt_spmask, "gt_center": gt_center, "sp_ref_mask": ref}


def fine_labels(scene: PreparedScene, instance: np.ndarray, fine_of_raw: dict[str, int],
                folder: str | Path = "") -> np.ndarray:
    """(N,) int64 NYU40 id - 1 of each point's instance (``instance``: (N,) ids), ``IGNORE_LABEL`` where unknown.

    ``fine_of_raw``: raw category -> NYU40 id - 1 (from the label map); ``folder`` names the scene in errors.

    Raises:
        DataFormatError: the scene's ``meta.json`` has no ``instance_labels`` (e.g. the Pointcept layout).
    """
    classes = instance_classes(scene, fine_of_raw, folder, default=IGNORE_LABEL)
    lookup = np.full(max(classes, default=-1) + 2, IGNORE_LABEL, dtype=np.int64)  # last slot: instance -1
    for obj, cls in classes.items():
        if obj >= 0:
            lookup[obj] = cls
    return lookup[np.where(instance >= 0, np.minimum(instance, len(lookup) - 1), len(lookup) - 1)]


class Refer3DDataset(Dataset):
    """Scenes with up to K descriptions each; items are plain dicts that :meth:`collate` batches.

    Args:
        scenes_dir: folder of prepared scenes (``<scenes_dir>/<scene_id>/``, see ``PreparedScene``).
        records: descriptions of one split (any order; chunking sorts them stably by scene).
        transform: ``TrainTransform`` / ``ValTransform`` or any ``(scene, rng) -> point arrays`` callable.
        max_descriptions: K, descriptions per item (RG-SAN 16 train / 64 val, MDIN 8 / 64).
        seed: base seed of the per-item generators (non-negative).
        require_superpoints: fail on scenes without ``superpoint.npy``; when False such scenes give
            items without superpoint fields, and a batch may not mix the two kinds.
        cache_size: prepared scenes kept in memory per process (least recently used evicted).
        label_map: ScanNet's ``scannetv2-labels.combined.tsv``; when given, every item also has ``semantic_fine``:
            the NYU40 id - 1 of each point's instance, from the raw category the preparer keeps in ``meta.json``
            ``instance_labels`` (-100 for unannotated points and categories the map does not know). For heads that
            need classes finer than ScanNet-20 (lamps, pillows, TVs are outside it).

    Raises:
        DataFormatError: there are no records, a record's scene folder is missing (at construction), or an
            object id of a record is not an instance of its scene (when the item is loaded), or, with a
            ``label_map``, a scene's ``meta.json`` has no ``instance_labels``.
    """

    def __init__(self, scenes_dir: str | Path, records: Sequence[ReferRecord], transform: SceneTransform,
                 max_descriptions: int, seed: int = 0, require_superpoints: bool = True, cache_size: int = 4,
                 label_map: str | Path | None = None) -> None:
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.scenes_dir = Path(scenes_dir)
        self.transform = transform
        self.max_descriptions = max_descriptions
        self.seed = int(seed)
        self.require_superpoints = require_superpoints
        self.cache_size = max(int(cache_size), 1)
        self.items = chunk_records(records, max_descriptions)
        self.fine_of_raw = ({raw: row.nyu40id - 1 for raw, row in read_label_tsv(label_map).items()
                             if 1 <= row.nyu40id <= len(NYU40_CLASSES)} if label_map else None)
        if not self.items:  # an empty split would evaluate to "count 0" without a word
            raise DataFormatError(self.scenes_dir, "no descriptions to load (empty annotation file, or every record "
                                  "filtered out by scene_ids / limit)", field="records")
        for scene_id, recs in self.items:
            if not (self.scenes_dir / scene_id).is_dir():
                raise DataFormatError(self.scenes_dir / scene_id, "prepared scene folder is missing (run "
                                      "`grounding prepare` for this split or fix paths.scenes)",
                                      record=recs[0].sample_id, field="scene_id")
        # Shared memory: set_epoch in the main process is seen by (persistent) DataLoader workers.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cache: OrderedDict[str, tuple[PreparedScene, set[int]]] = OrderedDict()

    collate = staticmethod(ReferBatch3D.collate)

    def __len__(self) -> int:
        return len(self.items)

    def eval_sample_ids(self) -> list[str]:
        """Every description's ``sample_id``: an evaluation writes one record per description."""
        return [r.sample_id for _, recs in self.items for r in recs]

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` for every later ``__getitem__`` (all workers)."""
        self._epoch.fill_(int(epoch))

    def generator(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch: ``default_rng([seed, epoch, index])``."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()  # workers load their own scenes; don't pickle arrays
        return state

    def _scene(self, scene_id: str) -> tuple[PreparedScene, set[int]]:
        """The prepared scene and its set of instance ids, through the LRU cache."""
        if scene_id in self._cache:
            self._cache.move_to_end(scene_id)
            return self._cache[scene_id]
        scene = PreparedScene.load(self.scenes_dir / scene_id, require_superpoints=self.require_superpoints)
        entry = (scene, {int(v) for v in np.unique(scene.instance)})
        self._cache[scene_id] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def __getitem__(self, index: int) -> dict[str, Any]:
        """One item (keys documented in :meth:`ReferBatch3D.collate`), computed after the transform."""
        scene_id, records = self.items[index]
        scene, instance_ids = self._scene(scene_id)
        for rec in records:
            missing = [o for o in rec.object_ids if o < 0 or o not in instance_ids]
            if missing:
                raise DataFormatError(self.scenes_dir / scene_id / "instance.npy",
                                      f"object id(s) {missing} are not instances of this scene "
                                      f"(it has {len(instance_ids - {-1})} objects)",
                                      record=rec.sample_id, field="object_ids")
        arrays = self.transform(scene, self.generator(index))
        item: dict[str, Any] = {"scene_id": scene_id, "num_original_points": scene.num_points,
                                "records": list(records)}
        for key in ("xyz", "xyz_middle", "color", "semantic", "instance", "point_index"):
            item[key] = torch.from_numpy(np.ascontiguousarray(arrays[key]))
        if self.fine_of_raw is not None:
            item["semantic_fine"] = torch.from_numpy(fine_labels(scene, arrays["instance"], self.fine_of_raw,
                                                                 self.scenes_dir / scene_id))
        if "superpoint" in arrays:
            item["superpoint"] = torch.from_numpy(np.ascontiguousarray(arrays["superpoint"]))
            for key, value in description_targets(arrays, records).items():
                item[key] = torch.from_numpy(value)
        return item

    def __repr__(self) -> str:
        return (f"Refer3DDataset({len(self.items)} items, K={self.max_descriptions}, dir={self.scenes_dir}, "
                f"transform={self.transform!r})")
