"""Dataset of the image tasks (RIS, REC): RefCOCO-family expressions -> letterboxed items -> ``ReferBatch2D``.

Units (refcoco spec §3.3): evaluation has one item per sentence; DIT trains on one item per *referred object* per
epoch with one of its sentences drawn at random (``unit="ref"``), so an epoch of RefCOCO is 42,404 items, not
120,624. ``unit="sentence"`` trains on every sentence.

Randomness: item ``i`` of epoch ``e`` draws from ``numpy.random.default_rng([seed, e, i])`` (which sentence,
which scale, jitter, flip), so an item depends only on (seed, epoch, index), whichever worker loads it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.batch2d import ReferBatch2D
from datasets.errors import DataFormatError
from datasets.object_maps import ObjectMaps, place_label_maps
from datasets.transforms.image2d import Letterbox

UNITS = ("sentence", "ref")


def read_rgb(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB image from a JPEG or PNG file (grey and palette images are converted)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataFormatError(path, "image file not found") from None
    except (OSError, Image.DecompressionBombError) as err:
        # DecompressionBombError is not an OSError: a header claiming gigapixels must still name the file.
        raise DataFormatError(path, f"not a readable image ({err})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


class ReferImageDataset(Dataset):
    """Letterboxed RefCOCO-format expressions.

    Args:
        records: the reader's expressions (:class:`datasets.refcoco.RefExpression`: ``ref_id``, ``sentence``,
            ``image_file``, ``image_id``, ``height``, ``width``, ``box``, ``sample_id``, ``mask()``).
        transform: the letterbox (``train=True`` for training).
        unit: ``"sentence"`` or ``"ref"`` (see the module docstring).
        seed: base of the per-item random streams.
        image_cache: keep up to this many decoded images in memory (the generated sets fit; 0 turns it off).
        object_maps: per-pixel attribute labels of every object of the picture (:class:`~datasets.object_maps.
            ObjectMaps`), carried onto the canvas as item ``attr_maps`` (K, S, S) int64; None: no such field.
    """

    def __init__(self, records: Sequence[Any], transform: Letterbox, unit: str = "sentence", seed: int = 0,
                 image_cache: int = 0, object_maps: ObjectMaps | None = None) -> None:
        if unit not in UNITS:
            raise ValueError(f"ReferImageDataset.unit must be one of {UNITS}, got {unit!r}")
        if not records:
            raise ValueError("ReferImageDataset got no expressions (check the split and the annotation files)")
        self.records = list(records)
        self.transform = transform
        self.unit = unit
        self.seed = seed
        self.epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self.image_cache = image_cache
        self.object_maps = object_maps
        self._images: OrderedDict[str, torch.Tensor] = OrderedDict()
        if unit == "ref":
            by_ref: dict[tuple, list[int]] = {}
            for i, r in enumerate(self.records):
                by_ref.setdefault((r.dataset, r.ref_id), []).append(i)
            self.units = list(by_ref.values())
        else:
            self.units = [[i] for i in range(len(self.records))]

    def set_epoch(self, epoch: int) -> None:
        """Called by the engine at each training epoch start (also reaches persistent workers)."""
        self.epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.units)

    def eval_sample_ids(self) -> list[str] | None:
        """The ``sample_id`` of every expression (unit ``sentence``); None for unit ``ref``, where the sentence of
        each referred object is drawn, so only the number of records (one per object) is fixed."""
        return [r.sample_id for r in self.records] if self.unit == "sentence" else None

    def _image(self, path: Path) -> torch.Tensor:
        key = str(path)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        image = read_rgb(path)
        if self.image_cache > 0:
            self._images[key] = image
            while len(self._images) > self.image_cache:
                self._images.popitem(last=False)
        return image

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, int(self.epoch.item()), index])
        choices = self.units[index]
        rec = self.records[choices[int(rng.integers(len(choices)))] if len(choices) > 1 else choices[0]]
        image = self._image(Path(rec.image_file))
        if tuple(image.shape[1:]) != (rec.height, rec.width):
            raise DataFormatError(rec.image_file, f"image is {tuple(image.shape[1:])} (H, W) but instances.json "
                                  f"says ({rec.height}, {rec.width})", record=f"image_id {rec.image_id}",
                                  field="height/width")
        mask = torch.from_numpy(np.ascontiguousarray(rec.mask())).bool()
        item = self.transform(image, mask, rec.sentence, rng if self.transform.train else None)
        x, y, w, h = (float(v) for v in rec.box)
        flipped = item.pop("flipped")
        if flipped:
            mask = mask.flip(-1)
            x = rec.width - x - w
        if self.object_maps is not None:
            maps = torch.from_numpy(self.object_maps(rec.image_id))
            item["attr_maps"] = place_label_maps(maps, flipped, item["pad_tl"], item["resized_hw"],
                                                 int(item["image"].shape[-1]))
        item.update(gt_original=mask, original_hw=(rec.height, rec.width), box=(x, y, w, h),
                    sample_id=rec.sample_id, image_id=rec.image_id, record=rec)
        return item

    collate = staticmethod(ReferBatch2D.collate)


def refer_image_dataset(root: str | Path, dataset: str, split: str, transform: Letterbox,
                        split_by: str | None = None, images_dir: str | Path | None = None, unit: str = "sentence",
                        seed: int = 0, limit: int | None = None, image_cache: int = 0,
                        object_maps: Sequence[str] | None = None) -> ReferImageDataset:
    """RefCOCO-family expressions of one split (real or generated) as a dataset; the hydra ``_target_``.

    Args:
        root: folder holding ``<dataset>/refs(<split_by>).p`` and ``<dataset>/instances.json``.
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` or the generated ``synthetic2d``.
        split: ``train``, ``val``, ``testA``, ``testB`` or ``test`` (refer's matching rules).
        split_by: the partition; None = the toolkit's default (unc, unc, umd).
        images_dir: COCO ``train2014`` folder; None = ``<root>/images/train2014`` (or ``<root>/train2014``).
        limit: keep only the first ``limit`` expressions (quick runs).
        object_maps: attribute kinds of per-pixel object labels to add to every item (``attr_maps``; kinds of
            :class:`~datasets.object_maps.ObjectMaps`: ``category`` for any partition, ``color`` and ``size`` from
            ``<root>/<dataset>/scenes.json`` of the generated pictures); None: none (DIT).
    """
    from datasets.refcoco import load_refer

    records = load_refer(root, dataset, split_by=split_by, splits=split, images_dir=images_dir)
    if limit is not None:
        records = records[:limit]
    maps = None
    if object_maps:
        maps = ObjectMaps(records[0].instances_file, object_maps, scenes_file=Path(root) / dataset / "scenes.json")
    return ReferImageDataset(records, transform, unit=unit, seed=seed, image_cache=image_cache, object_maps=maps)
