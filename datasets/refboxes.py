"""Dataset of REC by box retrieval: one item per *image* with its candidate boxes, the expressions that refer
into it and (optionally) one detection query per category name (box-retrieval spec §4, §6).

Why images, not sentences: the backbone sees no text (spec §4.4), so one image encoding serves every expression
and every category query of that image; the candidates of an image are scored for all its queries at once.
The REC evaluation unit stays the sentence: every sentence of the split is one expression query, exactly once.

Queries of an item (expressions first, then categories):
- expression: the ref's sentence; ``target`` = the candidate with the highest IoU to the ref's box when that IoU
  reaches ``positive_iou`` (else -1: no correct candidate); ``positives`` = candidates with IoU >= positive_iou;
- category (detection, COCO protocol): the category name; ``positives`` = candidates with IoU >= positive_iou
  to any annotated box of that category (zero, one or many); ``target`` = -1.

Randomness: item ``i`` of epoch ``e`` draws from ``numpy.random.default_rng([seed, e, i])`` (candidate
negatives, the shuffle of the candidate order, sentence choice, augmentation); evaluation items use epoch 0,
so an evaluation is reproducible, and its candidate order is still a shuffle, never the annotation order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.batch_boxes import RetrievalBatch
from datasets.candidates import CandidateSource, ImageBoxes, iou_matrix, shuffle_candidates
from datasets.errors import DataFormatError
from datasets.refimage import read_rgb
from datasets.transforms.boxes2d import BoxLetterbox, flip_boxes

__all__ = ["RefBoxDataset", "refer_box_dataset"]

SENTENCES = ("all", "one_per_ref")


class RefBoxDataset(Dataset):
    """Images with candidates, expressions and category queries; items collate into :class:`RetrievalBatch`.

    Args:
        records: the reader's expressions (:class:`datasets.refcoco.RefExpression`).
        images: annotated boxes per image id (:func:`datasets.candidates.index_image_boxes`).
        categories: category id -> name (the detection queries' texts).
        candidates: the candidate source (:mod:`datasets.candidates`).
        transform: the letterbox (``train=True`` for training augmentation and training-only candidates).
        sentences: ``"all"`` sentences of the image's refs, or ``"one_per_ref"`` (one drawn per ref and epoch;
            training only, evaluation always has every sentence).
        category_queries: None or 0 (none), ``"all"`` (every category, the COCO protocol), ``"present"``, or an
            int k (the categories present, then absent ones drawn at random, k in all).
        positive_iou: a candidate is correct at IoU >= this with the ground truth (0.5, Acc@0.5).
        seed: base of the per-item random streams.
        image_cache: keep up to this many decoded images in memory (0: off).
    """

    def __init__(self, records: Sequence[Any], images: Mapping[int, ImageBoxes], categories: Mapping[int, str],
                 candidates: CandidateSource, transform: BoxLetterbox, sentences: str = "all",
                 category_queries: int | str | None = None, positive_iou: float = 0.5, seed: int = 0,
                 image_cache: int = 0) -> None:
        if sentences not in SENTENCES:
            raise ValueError(f"RefBoxDataset.sentences must be one of {SENTENCES}, got {sentences!r}")
        if isinstance(category_queries, str) and category_queries not in ("all", "present"):
            raise ValueError(f"RefBoxDataset.category_queries must be None, an int, 'all' or 'present', "
                             f"got {category_queries!r}")
        if not records:
            raise ValueError("RefBoxDataset got no expressions (check the split and the annotation files)")
        self.records, self.images = list(records), images
        self.categories = dict(sorted(categories.items()))
        self.candidates, self.transform = candidates, transform
        self.sentences, self.category_queries = sentences, category_queries
        self.positive_iou, self.seed, self.image_cache = positive_iou, seed, image_cache
        self.epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._decoded: OrderedDict[str, torch.Tensor] = OrderedDict()
        by_image: dict[int, dict[int, list[int]]] = {}  # image -> ref -> record indices, file order
        for i, r in enumerate(self.records):
            if r.image_id not in images:
                raise DataFormatError(r.image_file, f"image {r.image_id} has no entry in the annotation index",
                                      record=f"sentence {r.sent_id}", field="image_id")
            by_image.setdefault(r.image_id, {}).setdefault(r.ref_id, []).append(i)
        self.units = [(image_id, list(refs.values())) for image_id, refs in by_image.items()]

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at each training epoch start."""
        self.epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.units)

    def eval_sample_ids(self) -> list[str] | None:
        """The ``sample_id`` of every expression; None when training draws one sentence per object.

        Per-image category queries (the COCO protocol) also write records; those are not listed here.
        """
        if self.train and self.sentences == "one_per_ref":
            return None
        return [self.records[i].sample_id for _, refs in self.units for ids in refs for i in ids]

    @property
    def train(self) -> bool:
        return bool(self.transform.train)

    def _image(self, path: Path) -> torch.Tensor:
        key = str(path)
        if key in self._decoded:
            self._decoded.move_to_end(key)
            return self._decoded[key]
        image = read_rgb(path)
        if self.image_cache > 0:
            self._decoded[key] = image
            while len(self._decoded) > self.image_cache:
                self._decoded.popitem(last=False)
        return image

    def _category_ids(self, info: ImageBoxes, rng: np.random.Generator) -> list[int]:
        mode = self.category_queries
        if not mode:
            return []
        if mode == "all":
            return list(self.categories)
        present = [c for c in self.categories if c in set(info.category_ids.tolist())]
        if mode == "present":
            return present
        absent = [c for c in self.categories if c not in present]
        if self.train:
            present = [present[i] for i in rng.permutation(len(present))]
            absent = [absent[i] for i in rng.permutation(len(absent))]
        return (present + absent)[:int(mode)]

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(self.epoch.item()) if self.train else 0, index])
        image_id, refs = self.units[index]
        if self.train and self.sentences == "one_per_ref":
            chosen = [ids[int(rng.integers(len(ids)))] for ids in refs]
        else:
            chosen = [i for ids in refs for i in ids]
        recs = [self.records[i] for i in chosen]
        info = self.images[image_id]
        image = self._image(Path(recs[0].image_file))
        if tuple(image.shape[1:]) != (info.height, info.width):
            raise DataFormatError(recs[0].image_file, f"image is {tuple(image.shape[1:])} (H, W) but instances.json "
                                  f"says ({info.height}, {info.width})", record=f"image_id {image_id}",
                                  field="height/width")
        gt = np.array([[x, y, x + w, y + h] for x, y, w, h in (r.box for r in recs)], np.float64).reshape(-1, 4)
        cands = self.candidates(info, np.unique(gt, axis=0), rng, self.train)
        cands, _ = shuffle_candidates(cands, rng)
        category_ids = self._category_ids(info, rng)
        out = self.transform(image, [r.sentence for r in recs] + [self.categories[c] for c in category_ids],
                             rng if self.train else None)
        # Targets are computed in the original frame; IoU does not change under the flip.
        queries = []
        iou = iou_matrix(gt, cands.boxes) if len(cands) else np.zeros((len(recs), 0))
        for e, rec in enumerate(recs):
            pos = iou[e] >= self.positive_iou
            target = int(iou[e].argmax()) if pos.any() else -1
            queries.append({"text": out["texts"][e], "target": target, "positives": pos, "gt_box": gt[e],
                            "category_id": rec.category_id, "query_id": rec.sample_id, "expression": True})
        for k, cid in enumerate(category_ids):
            boxes = info.boxes[info.category_ids == cid]
            pos = (iou_matrix(cands.boxes, boxes).max(1) >= self.positive_iou) if len(boxes) and len(cands) \
                else np.zeros(len(cands), bool)
            queries.append({"text": out["texts"][len(recs) + k], "target": -1, "positives": pos,
                            "gt_box": np.full(4, np.nan), "category_id": cid, "expression": False,
                            "query_id": f"{recs[0].dataset}/image{image_id}/category{cid}"})
        boxes = cands.boxes
        if out["flipped"]:
            boxes = flip_boxes(boxes, info.width)
            for q in queries:
                q["gt_box"] = flip_boxes(q["gt_box"], info.width)
        return {"image": out["image"], "pad_tl": out["pad_tl"], "resized_hw": out["resized_hw"],
                "original_hw": (info.height, info.width), "flipped": out["flipped"], "image_id": image_id,
                "image_key": f"{recs[0].dataset}/image{image_id}", "boxes": boxes, "box_scores": cands.scores,
                "queries": queries}

    collate = staticmethod(RetrievalBatch.collate)


def refer_box_dataset(root: str | Path, dataset: str, split: str, transform: BoxLetterbox, candidates: CandidateSource,
                      split_by: str | None = None, images_dir: str | Path | None = None, sentences: str = "all",
                      category_queries: int | str | None = None, positive_iou: float = 0.5, seed: int = 0,
                      limit: int | None = None, image_cache: int = 0) -> RefBoxDataset:
    """RefCOCO-family expressions of one split (real or generated) grouped by image; the hydra ``_target_``.

    Args:
        root, dataset, split, split_by, images_dir: as :func:`datasets.refimage.refer_image_dataset`.
        candidates: the candidate source, e.g. :class:`datasets.candidates.AnnotatedBoxes`.
        limit: keep only the first ``limit`` images (quick runs).
        Others: see :class:`RefBoxDataset`.
    """
    from datasets.candidates import index_image_boxes
    from datasets.refcoco import (
        DEFAULT_SPLIT_BY,
        build_expressions,
        read_instances,
        read_refs_pickle,
        refs_path,
        resolve_images_dir,
    )

    if split_by is None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise ValueError(f"no default partition for dataset {dataset!r}; pass split_by")
        split_by = DEFAULT_SPLIT_BY[dataset]
    refs_file = refs_path(root, dataset, split_by)
    refs = read_refs_pickle(refs_file)
    inst = read_instances(Path(root) / dataset / "instances.json")  # read once: expressions and all boxes
    records = build_expressions(refs, refs_file, inst, dataset, split_by, [split], resolve_images_dir(root, images_dir))
    if limit is not None:
        keep = list(dict.fromkeys(r.image_id for r in records))[:limit]
        records = [r for r in records if r.image_id in set(keep)]
    wanted = {r.image_id for r in records}
    images = {i: b for i, b in index_image_boxes(inst).items() if i in wanted}
    return RefBoxDataset(records, images, inst.categories, candidates, transform, sentences=sentences,
                         category_queries=category_queries, positive_iou=positive_iou, seed=seed,
                         image_cache=image_cache)
