"""Per-pixel attribute maps of every annotated object of a picture: dense auxiliary targets for RIS training.

Why: a referring model trained from scratch must learn from one mask per expression both what the objects of a
picture are (their class, colour, size) and which one the words name (docs/dit.md). Labelling every pixel with the
attributes of the object it belongs to gives the image features a direct signal for the first part at every step.

What: for one picture, a (K, H, W) uint8 map at the original resolution, one channel per kind in ``kinds``:
- ``category``: 1 + the index of the annotation's ``category_id`` among ``instances.json``'s categories sorted by
  id (RefCOCO: the 80 COCO classes of every annotated object, not only the referred ones);
- ``color`` / ``size``: 1 + the index of the object's colour / size word in the generator's vocabulary
  (``scenes.json``, generated pictures only; RefCOCO has no such file).
0 is background (no annotation). Annotations are painted in file order, so where two masks overlap the later one
wins (the generator stores visible parts, which do not overlap).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from datasets.coco_masks import decode_segmentation
from datasets.errors import DataFormatError
from datasets.refcoco import CocoInstances, _annotation, _get, _int, read_instances

__all__ = ["IGNORE", "KINDS", "ObjectMaps", "place_label_maps"]

KINDS = ("category", "color", "size")
IGNORE = -1  # label of canvas padding: no loss there


def _scene_vocab() -> dict[str, tuple[str, ...]]:
    from datasets.synthetic.images.scene import COLORS, SIZES

    return {"color": COLORS, "size": tuple(SIZES)}


class ObjectMaps:
    """Attribute maps of the pictures of one ``instances.json`` (see the module docstring).

    Args:
        instances_file: the partition's ``instances.json``.
        kinds: subset of :data:`KINDS`, in the order of the map's channels.
        scenes_file: the generator's ``scenes.json``; required for ``color`` and ``size``.
    """

    def __init__(self, instances_file: str | Path, kinds: Sequence[str] = ("category",),
                 scenes_file: str | Path | None = None) -> None:
        kinds = tuple(kinds)
        if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
            raise ValueError(f"ObjectMaps.kinds must be distinct names from {KINDS}, got {list(kinds)}")
        self.kinds = kinds
        self.instances: CocoInstances = read_instances(instances_file)
        self.category_index = {cid: i for i, cid in enumerate(sorted(self.instances.categories))}
        self.by_image: dict[int, list[int]] = {}
        path = self.instances.path
        for ann_id, (i, rec) in sorted(self.instances.annotations.items(), key=lambda kv: kv[1][0]):  # file order
            where = f"annotation {i} (id {ann_id})"
            image_id = _int(path, _get(path, rec, "image_id", where), where, "image_id")
            self.by_image.setdefault(image_id, []).append(ann_id)
        self.vocab: dict[str, tuple[str, ...]] = {
            "category": tuple(self.instances.categories[c] for c in sorted(self.instances.categories))}
        self.scene_attrs: dict[int, dict[str, str]] = {}
        if any(k != "category" for k in kinds):
            self._read_scenes(scenes_file)

    def _read_scenes(self, scenes_file: str | Path | None) -> None:
        if scenes_file is None or not Path(scenes_file).is_file():
            raise DataFormatError(scenes_file or "<scenes.json>", f"ObjectMaps kinds {list(self.kinds)} need the "
                                  "generator's scenes.json (grounding prepare synthetic2d writes it; RefCOCO has "
                                  "colour and size for no object, so use kinds=[category] there)")
        path = Path(scenes_file)
        self.vocab.update(_scene_vocab())
        for scene in json.loads(path.read_text())["images"]:
            for t, obj in enumerate(scene.get("objects", ())):
                where = f"image_id {scene.get('image_id')}, object {t}"
                for kind in self.kinds:
                    if kind == "category":
                        continue
                    if obj.get(kind) not in self.vocab[kind]:
                        raise DataFormatError(path, f"{kind} {obj.get(kind)!r} is not one of {self.vocab[kind]}",
                                              record=where, field=kind)
                if "ann_id" not in obj:
                    raise DataFormatError(path, "object without ann_id", record=where, field="ann_id")
                self.scene_attrs[int(obj["ann_id"])] = {k: obj[k] for k in self.kinds if k != "category"}

    @property
    def num_classes(self) -> list[int]:
        """Classes per channel, background included (the model's head sizes)."""
        return [len(self.vocab[k]) + 1 for k in self.kinds]

    def __call__(self, image_id: int) -> np.ndarray:
        """(K, H, W) uint8 labels of picture ``image_id`` at its original resolution (0 = background)."""
        if image_id not in self.instances.images:
            raise DataFormatError(self.instances.path, "no such image", record=f"image_id {image_id}", field="images")
        info = self.instances.images[image_id]
        out = np.zeros((len(self.kinds), info.height, info.width), dtype=np.uint8)
        for ann_id in self.by_image.get(image_id, ()):
            _, category_id, _, seg = _annotation(self.instances, ann_id)
            where = f"annotation id {ann_id}"
            mask = decode_segmentation(seg, info.height, info.width, path=self.instances.path, record=where)
            for c, kind in enumerate(self.kinds):
                if kind == "category":
                    if category_id not in self.category_index:
                        raise DataFormatError(self.instances.path, f"category_id {category_id} is not a category",
                                              record=where, field="category_id")
                    value = self.category_index[category_id]
                else:
                    if ann_id not in self.scene_attrs:
                        raise DataFormatError(self.instances.path, "annotation has no object in scenes.json",
                                              record=where, field=kind)
                    value = self.vocab[kind].index(self.scene_attrs[ann_id][kind])
                out[c][mask] = value + 1
        return out


def place_label_maps(maps: Tensor, flipped: bool, pad_tl: tuple[int, int], resized_hw: tuple[int, int],
                     size: int) -> Tensor:
    """Carry (K, H, W) original-resolution labels onto the letterbox canvas as the image was carried.

    Flip (when the image was flipped), nearest resize to ``resized_hw`` and placement at ``pad_tl`` on a
    (K, size, size) int64 canvas whose padding is :data:`IGNORE`.
    """
    if flipped:
        maps = maps.flip(-1)
    h, w = resized_hw
    small = F.interpolate(maps[None].float(), size=(h, w), mode="nearest-exact")[0].long()
    canvas = torch.full((maps.shape[0], size, size), IGNORE, dtype=torch.long)
    top, left = pad_tl
    canvas[:, top:top + h, left:left + w] = small
    return canvas
