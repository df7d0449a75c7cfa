"""A word curriculum for the generated pictures: single-attribute queries first, the real expressions after.

Why: trained from scratch on the CPU budget, DIT learns to segment "the objects of the picture" long before it
reads which one is meant (docs/dit.md). A query answered by one or two attributes of the referent ("the red one",
"the star", "the red star") exercises the words of the referent's noun phrase with nothing else to parse; the
generated expressions ("the red one left of the green square") take over as training goes on.

What (training split only; the val and test expressions are never touched):
- **queries**: for every training picture, every object, and every noun phrase of its colour, its class, or
  both that picks out exactly that object (the generator's own :class:`Resolver`, from ``scenes.json``), one
  query worded by the generator's :func:`render` (its articles, synonyms and case), with the object's
  annotation from ``instances.json`` as the target;
- **mixing**: item ``i`` of epoch ``e`` is replaced, with probability ``schedule[min(e, len - 1)]``, by a query
  drawn from ``numpy.random.default_rng([seed, e, i, 7])``, so the mixture depends only on (seed, epoch, index).
  The epoch's length stays that of the real expressions.

Only for ``synthetic2d``: RefCOCO has no ``scenes.json``. Not DIT's recipe (an option of ``dit_synthetic``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datasets.errors import DataFormatError
from datasets.refcoco import RefExpression, _annotation, read_instances
from datasets.refimage import ReferImageDataset, refer_image_dataset
from datasets.synthetic.images.expressions import ATTRS, Fact, Resolver, render, tokenize

__all__ = ["AttributeCurriculum", "attribute_curriculum", "attribute_queries"]

log = logging.getLogger(__name__)

# The noun phrases asked: colour, class, colour and class (size words alone are relative to the picture).
QUERY_ATTRS: tuple[tuple[str, ...], ...] = (("color",), ("cls",), ("color", "cls"))


def _scene_facts(scene: dict[str, Any], path: Path) -> list[Fact]:
    try:
        return [Fact(o["category"], o["color"], o["size"], float(o["center"][0]), float(o["center"][1]))
                for o in scene["objects"]]
    except (KeyError, IndexError, TypeError) as err:
        raise DataFormatError(path, f"an object lacks {err}", record=f"image_id {scene.get('image_id')}",
                              field="objects") from err


def attribute_queries(records: Sequence[RefExpression], scenes_file: str | Path,
                      seed: int = 0) -> list[RefExpression]:
    """Single-attribute queries for every picture of ``records`` (see the module docstring).

    Args:
        records: expressions of the split (their pictures are used; one query per (object, noun phrase)).
        scenes_file: the generator's ``scenes.json`` (objects with category, colour, size, centre, ann_id).
        seed: wording seed; a query's wording depends on (seed, image_id, ann_id, noun phrase).

    Returns:
        New :class:`RefExpression` records on the same pictures, with negative ``ref_id`` / ``sent_id`` (never
        equal to a generated one), the object's box and segmentation from ``instances.json``.
    """
    path = Path(scenes_file)
    if not path.is_file():
        raise DataFormatError(path, "the attribute curriculum needs the generator's scenes.json "
                              "(grounding prepare synthetic2d writes it; RefCOCO has none)")
    scenes = {s["image_id"]: s for s in json.loads(path.read_text())["images"]}
    first: dict[int, RefExpression] = {}
    for r in records:
        first.setdefault(r.image_id, r)
    if not first:
        return []
    # The reader's own index and checks of instances.json (one file per partition; boxes and polygons validated).
    inst = read_instances(next(iter(first.values())).instances_file)
    out: list[RefExpression] = []
    for image_id, rec in first.items():
        if image_id not in scenes:
            raise DataFormatError(path, "no scene for a picture of the split", record=f"image_id {image_id}",
                                  field="images")
        scene = scenes[image_id]
        facts = _scene_facts(scene, path)
        resolver = Resolver(facts, rec.width, rec.height)
        for t, obj in enumerate(scene["objects"]):
            where = f"image_id {image_id}, object {t}"
            if obj.get("ann_id") not in inst.annotations:
                raise DataFormatError(path, f"ann_id {obj.get('ann_id')} is not an annotation of {inst.path}",
                                      record=where, field="ann_id")
            ann_image, category_id, box, seg = _annotation(inst, obj["ann_id"])
            if ann_image != image_id or category_id not in inst.categories:
                raise DataFormatError(path, f"annotation {obj['ann_id']} of {inst.path} is on image {ann_image} "
                                      f"with category {category_id}", record=where, field="ann_id")
            for q, said in enumerate(QUERY_ATTRS):
                np_ = {k: (getattr(facts[t], k) if k in said else None) for k in ATTRS}
                if resolver.candidates(np_) != [t]:
                    continue  # the phrase does not single the object out in this picture
                raw = render(np.random.default_rng([seed, image_id, obj["ann_id"], q]), {"kind": "attr", "np": np_})
                tokens = tuple(tokenize(raw))  # as the generator writes "sent" and "tokens"
                n = -(len(out) + 1)
                out.append(dataclasses.replace(
                    rec, ref_id=n, sent_id=n, ann_id=obj["ann_id"], category_id=category_id,
                    category_name=inst.categories[category_id], sentence=" ".join(tokens), raw=raw, tokens=tokens,
                    box=box, segmentation=seg))
    return out


class AttributeCurriculum(Dataset):
    """The real expressions with items replaced by attribute queries at a per-epoch rate (module docstring).

    Args:
        real: the split's expressions.
        queries: the attribute queries (same transform).
        schedule: replacement probability per epoch; the last value holds for every later epoch.
    """

    def __init__(self, real: ReferImageDataset, queries: ReferImageDataset, schedule: Sequence[float]) -> None:
        if not schedule or any(not 0.0 <= float(p) <= 1.0 for p in schedule):
            raise ValueError(f"AttributeCurriculum.schedule must be probabilities in [0, 1], got {list(schedule)}")
        if len(queries) == 0 and max(schedule) > 0:
            raise ValueError("AttributeCurriculum: no attribute query singles out any object of the split")
        self.real, self.queries = real, queries
        self.schedule = [float(p) for p in schedule]
        self.seed = real.seed
        self.transform, self.epoch = real.transform, real.epoch  # the ReferImageDataset interface the engine reads
        self.collate = real.collate

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at each training epoch start."""
        self.real.set_epoch(epoch)
        self.queries.set_epoch(epoch)

    def rate(self, epoch: int) -> float:
        """The replacement probability of ``epoch``."""
        return self.schedule[min(epoch, len(self.schedule) - 1)]

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, index: int) -> dict[str, Any]:
        epoch = int(self.epoch.item())  # shared memory: set_epoch reaches the loader's workers
        rng = np.random.default_rng([self.seed, epoch, index, 7])
        if rng.random() < self.rate(epoch):
            return self.queries[int(rng.integers(len(self.queries)))]
        return self.real[index]


def attribute_curriculum(root: str | Path, dataset: str, split: str, transform: Any,
                         schedule: Sequence[float] = (1.0, 0.5, 0.2), **kw: Any) -> AttributeCurriculum:
    """The hydra ``_target_`` for ``data.train``: :func:`refer_image_dataset` plus the attribute curriculum.

    ``schedule`` as :class:`AttributeCurriculum`; ``kw`` as :func:`refer_image_dataset` (the queries use the
    same transform, image cache and object maps, seed + 1). Logs how many queries were made.
    """
    real = refer_image_dataset(root, dataset, split, transform, **kw)
    recs = attribute_queries(real.records, Path(root) / dataset / "scenes.json", seed=real.seed)
    log.info("attribute curriculum: %d queries on %d pictures, replacement rate per epoch %s", len(recs),
             len({r.image_id for r in recs}), list(schedule))
    queries = ReferImageDataset(recs, real.transform, unit="sentence", seed=real.seed + 1,
                                image_cache=real.image_cache, object_maps=real.object_maps)
    return AttributeCurriculum(real, queries, schedule)
