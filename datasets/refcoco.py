"""RefCOCO, RefCOCO+ and RefCOCOg in the ``refer`` layout (RefCOCO spec §1).

The CSV exports are read by :mod:`datasets.refcoco_csv`; a user's folder is checked by :mod:`datasets.refcoco_check`.

Layout read by ``load_refer`` (spec §1.1)::

    <root>/<dataset>/refs(<split_by>).p   Python-2 pickle: a list of refs (one per referred object)
    <root>/<dataset>/instances.json       COCO instances of the images the dataset uses
    <root>/images/train2014/               COCO train2014 JPEGs (or <root>/train2014, or --images)

One ``RefExpression`` per sentence: the evaluation unit of RIS and REC (§1.5). Boxes are COCO
``[x, y, w, h]`` floats in original image pixels, top-left origin; masks are decoded at the original
image resolution by ``datasets.coco_masks``. Images are located by ``instances.json``
``images[].file_name``, never by the ref's own ``file_name`` (§1.2).
"""

from __future__ import annotations

import json
import math
import pickle
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from datasets.coco_masks import check_segmentation, decode_segmentation
from datasets.errors import DataFormatError

DATASETS = ("refcoco", "refcoco+", "refcocog")
PARTITIONS = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google"),
              "refclef": ("unc", "berkeley")}
# Toolkit rule (§1.4): the partitions that DIT, LAVT, CRIS and PolyFormer report.
DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "unc", "synthetic2d": "unc"}
SPLIT_NAMES = ("train", "val", "test", "testA", "testB", "testC", "testAB", "testBC", "testAC")
COCO_TRAIN2014_NAME = "COCO_train2014_{:012d}.jpg"

# Sentences per split (§1.5). refcoco+/unc/train and refcocog/umd/train are the published dataset totals
# minus the evaluation splits; the others are stated per split and match the CSV exports.
OFFICIAL_SENTENCE_COUNTS: dict[tuple[str, str, str], int] = {
    ("refcoco", "unc", "train"): 120624, ("refcoco", "unc", "val"): 10834,
    ("refcoco", "unc", "testA"): 5657, ("refcoco", "unc", "testB"): 5095,
    ("refcoco+", "unc", "train"): 120191, ("refcoco+", "unc", "val"): 10758,
    ("refcoco+", "unc", "testA"): 5726, ("refcoco+", "unc", "testB"): 4889,
    ("refcocog", "umd", "train"): 80512, ("refcocog", "umd", "val"): 4896, ("refcocog", "umd", "test"): 9602,
    ("refcocog", "google", "val"): 9536,
}
# Refs (objects) per split, only where §1.5 does not mark them unconfirmed.
OFFICIAL_REF_COUNTS: dict[tuple[str, str, str], int] = {
    ("refcoco", "unc", "train"): 42404, ("refcoco", "unc", "val"): 3811,
    ("refcoco", "unc", "testA"): 1975, ("refcoco", "unc", "testB"): 1810,
    ("refcocog", "umd", "train"): 42226, ("refcocog", "umd", "val"): 2573, ("refcocog", "umd", "test"): 5023,
}


def split_matches(label: str, wanted: str) -> bool:
    """Whether a ref whose split is ``label`` belongs to the requested split, as ``refer.getRefIds`` (§1.4).

    ``train``/``val``/``testAB``/``testBC``/``testAC`` match exactly; ``testA``/``testB``/``testC`` match
    every label containing that letter (so ``testAB`` is in both testA and testB); ``test`` matches every
    label containing "test".
    """
    if wanted not in SPLIT_NAMES:
        raise ValueError(f"unknown split {wanted!r}; expected one of {', '.join(SPLIT_NAMES)}")
    if wanted in ("testA", "testB", "testC"):
        return wanted[-1] in label
    if wanted == "test":
        return "test" in label
    return label == wanted


@dataclass(frozen=True)
class RefExpression:
    """One referring sentence of one ref (object) of a RefCOCO-family partition.

    Attributes:
        dataset, split_by, split: e.g. ``"refcoco"``, ``"unc"``, ``"testA"`` (the ref's own split label).
        ref_id, ann_id, image_id, category_id: ids as in the refs pickle and ``instances.json``.
        category_name: the COCO category name of ``category_id``.
        sent_id: the sentence id, unique within the partition.
        sentence: the file's ``sent`` (already lower-cased and tokenised by the dataset authors).
        raw: the annotator's original string; tokens: the file's word tokens of ``sent``.
        box: the annotation ``bbox`` (x, y, w, h), float pixels, top-left origin.
        image_file: the JPEG, from ``instances.json`` ``images[].file_name``; height, width: its size.
        segmentation: the raw COCO segmentation of the annotation (shared by the ref's sentences).
        instances_file: the ``instances.json`` it came from (named by mask errors).
    """

    dataset: str
    split_by: str
    split: str
    ref_id: int
    ann_id: int
    image_id: int
    category_id: int
    category_name: str
    sent_id: int
    sentence: str
    raw: str
    tokens: tuple[str, ...]
    box: tuple[float, float, float, float]
    image_file: Path
    height: int
    width: int
    segmentation: Any = field(default=None, compare=False, repr=False)
    instances_file: Path | None = field(default=None, compare=False, repr=False)

    @property
    def sample_id(self) -> str:
        return f"{self.dataset}/{self.sent_id}"

    @property
    def box_xyxy(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) = (x, y, x + w, y + h), no -1 (§1.6)."""
        x, y, w, h = self.box
        return (x, y, x + w, y + h)

    def mask(self) -> np.ndarray:
        """The referred object's mask: ``(height, width)`` bool, original image pixels (§1.6)."""
        return decode_segmentation(self.segmentation, self.height, self.width,
                                   path=self.instances_file or "<segmentation>", record=f"annotation id {self.ann_id}")


class ImageInfo(NamedTuple):
    file_name: str
    height: int
    width: int


class CocoInstances(NamedTuple):
    """An indexed ``instances.json``: images and categories validated, annotations by id (raw dicts)."""

    path: Path
    images: dict[int, ImageInfo]
    annotations: dict[int, tuple[int, dict[str, Any]]]  # id -> (position in the file, record)
    categories: dict[int, str]


def _int(path: Path, value: Any, where: str, field_name: str, positive: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (1 if positive else 0):
        kind = "a positive" if positive else "a non-negative"
        raise DataFormatError(path, f"expected {kind} integer, got {value!r}", record=where, field=field_name)
    return value


def _str(path: Path, value: Any, where: str, field_name: str, nonempty: bool = False) -> str:
    if not isinstance(value, str) or (nonempty and not value.strip()):
        want = "a non-empty string" if nonempty else "a string"
        raise DataFormatError(path, f"expected {want}, got {value!r}", record=where, field=field_name)
    return value


def _get(path: Path, rec: Any, key: str, where: str) -> Any:
    if not isinstance(rec, dict):
        raise DataFormatError(path, f"expected a dict, got {type(rec).__name__}", record=where)
    if key not in rec:
        raise DataFormatError(path, "field is missing", record=where, field=key)
    return rec[key]


def _box(path: Path, value: Any, where: str, field_name: str) -> tuple[float, float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or value[2] < 0 or value[3] < 0:
        raise DataFormatError(path, f"expected [x, y, w, h] finite numbers with w, h >= 0, got {value!r}",
                              record=where, field=field_name)
    return (float(value[0]), float(value[1]), float(value[2]), float(value[3]))


def _list(path: Path, value: Any, where: str, field_name: str) -> list[Any]:
    if not isinstance(value, list):
        raise DataFormatError(path, f"expected a list, got {type(value).__name__}", record=where, field=field_name)
    return value


def _fix_text(s: str) -> str:
    """Undo latin-1 decoding of Python-2 UTF-8 byte strings; real Unicode text passes unchanged."""
    if s.isascii():
        return s
    try:
        return s.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return s


class _DataOnlyUnpickler(pickle.Unpickler):
    # A refs file holds only lists, dicts, strings and numbers; refusing every global keeps a foreign
    # pickle from running code on load.
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it references {module}.{name}, but a refs file holds only plain data")


def read_refs_pickle(path: str | Path) -> list[Any]:
    """Load ``refs(<split_by>).p`` (Python 2 or 3 pickle) as a list of raw ref dicts.

    Python-2 ``str`` values arrive as latin-1 and are re-decoded as UTF-8 per text field by the reader.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "refs pickle is missing")
    try:
        with open(path, "rb") as f:
            data = _DataOnlyUnpickler(f, encoding="latin1").load()
    except Exception as e:  # pickle raises many types (UnpicklingError, EOFError, ValueError, KeyError, ...)
        raise DataFormatError(path, f"not a readable refs pickle: {e}") from e
    if not isinstance(data, list):
        raise DataFormatError(path, f"expected a list of refs, got {type(data).__name__}")
    return data


def read_instances(path: str | Path) -> CocoInstances:
    """Read and index a COCO ``instances.json``; images and categories are validated here, annotations when used."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "instances file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    if not isinstance(data, dict):
        raise DataFormatError(path, f"expected a COCO dict, got {type(data).__name__}")
    images: dict[int, ImageInfo] = {}
    for i, rec in enumerate(_list(path, _get(path, data, "images", "top level"), "top level", "images")):
        where = f"image {i}"
        iid = _int(path, _get(path, rec, "id", where), where, "id")
        where = f"image {i} (id {iid})"
        images[iid] = ImageInfo(_str(path, _get(path, rec, "file_name", where), where, "file_name", nonempty=True),
                                _int(path, _get(path, rec, "height", where), where, "height", positive=True),
                                _int(path, _get(path, rec, "width", where), where, "width", positive=True))
    annotations: dict[int, tuple[int, dict[str, Any]]] = {}
    for i, rec in enumerate(_list(path, _get(path, data, "annotations", "top level"), "top level", "annotations")):
        annotations[_int(path, _get(path, rec, "id", f"annotation {i}"), f"annotation {i}", "id")] = (i, rec)
    categories: dict[int, str] = {}
    for i, rec in enumerate(_list(path, _get(path, data, "categories", "top level"), "top level", "categories")):
        cid = _int(path, _get(path, rec, "id", f"category {i}"), f"category {i}", "id")
        categories[cid] = _str(path, _get(path, rec, "name", f"category {i} (id {cid})"), f"category {i} (id {cid})",
                               "name", nonempty=True)
    return CocoInstances(path, images, annotations, categories)


def refs_path(root: str | Path, dataset: str, split_by: str) -> Path:
    return Path(root) / dataset / f"refs({split_by}).p"


def resolve_images_dir(root: str | Path, images_dir: str | Path | None = None) -> Path:
    """``images_dir`` if given, else the first of ``<root>/images/train2014`` and ``<root>/train2014`` that exists."""
    if images_dir is not None:
        return Path(images_dir)
    candidates = [Path(root) / "images" / "train2014", Path(root) / "train2014"]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _annotation(inst: CocoInstances, ann_id: int) -> tuple[int, int, tuple[float, float, float, float], Any]:
    """(image_id, category_id, bbox, segmentation) of one annotation, validated against its image."""
    idx, rec = inst.annotations[ann_id]
    where, p = f"annotation {idx} (id {ann_id})", inst.path
    image_id = _int(p, _get(p, rec, "image_id", where), where, "image_id")
    if image_id not in inst.images:
        raise DataFormatError(p, f"image_id {image_id} is not in 'images'", record=where, field="image_id")
    category_id = _int(p, _get(p, rec, "category_id", where), where, "category_id")
    box = _box(p, _get(p, rec, "bbox", where), where, "bbox")
    seg = _get(p, rec, "segmentation", where)
    info = inst.images[image_id]
    check_segmentation(seg, info.height, info.width, p, where)
    return image_id, category_id, box, seg


def build_expressions(refs: Sequence[Any], refs_file: Path, inst: CocoInstances, dataset: str, split_by: str,
                      splits: Sequence[str] | None, images_dir: Path) -> list[RefExpression]:
    """Validate raw refs against the instances and expand them into sentences (file order)."""
    out: list[RefExpression] = []
    seen_refs: set[int] = set()
    seen_sents: set[int] = set()
    ann_cache: dict[int, tuple[int, int, tuple[float, float, float, float], Any]] = {}
    p = refs_file
    for i, ref in enumerate(refs):
        where = f"ref {i}"
        ref_id = _int(p, _get(p, ref, "ref_id", where), where, "ref_id")
        where = f"ref {i} (ref_id {ref_id})"
        if ref_id in seen_refs:
            raise DataFormatError(p, f"duplicate ref_id {ref_id}", record=where, field="ref_id")
        seen_refs.add(ref_id)
        split = _str(p, _get(p, ref, "split", where), where, "split", nonempty=True)
        if splits is not None and not any(split_matches(split, s) for s in splits):
            continue
        ann_id = _int(p, _get(p, ref, "ann_id", where), where, "ann_id")
        image_id = _int(p, _get(p, ref, "image_id", where), where, "image_id")
        category_id = _int(p, _get(p, ref, "category_id", where), where, "category_id")
        if ann_id not in inst.annotations:
            raise DataFormatError(p, f"ann_id {ann_id} is not an annotation of {inst.path}", record=where,
                                  field="ann_id")
        if ann_id not in ann_cache:
            ann_cache[ann_id] = _annotation(inst, ann_id)
        ann_image, ann_category, box, seg = ann_cache[ann_id]
        if ann_image != image_id:
            raise DataFormatError(p, f"image_id {image_id} differs from annotation {ann_id}'s image_id {ann_image} "
                                  f"in {inst.path}", record=where, field="image_id")
        if ann_category != category_id:
            raise DataFormatError(p, f"category_id {category_id} differs from annotation {ann_id}'s category_id "
                                  f"{ann_category} in {inst.path}", record=where, field="category_id")
        if category_id not in inst.categories:
            raise DataFormatError(inst.path, f"category id {category_id} (used by ref_id {ref_id} in {p}) is not "
                                  "in 'categories'", field="categories")
        info = inst.images[image_id]
        sentences = _list(p, _get(p, ref, "sentences", where), where, "sentences")
        if not sentences:
            raise DataFormatError(p, "a ref needs at least one sentence", record=where, field="sentences")
        for j, s in enumerate(sentences):
            f = f"sentences[{j}]"
            if not isinstance(s, dict):
                raise DataFormatError(p, f"expected a dict, got {type(s).__name__}", record=where, field=f)
            for key in ("sent_id", "sent", "raw", "tokens"):
                if key not in s:
                    raise DataFormatError(p, "field is missing", record=where, field=f"{f}.{key}")
            sent_id = _int(p, s["sent_id"], where, f"{f}.sent_id")
            if sent_id in seen_sents:
                raise DataFormatError(p, f"duplicate sent_id {sent_id}", record=where, field=f"{f}.sent_id")
            seen_sents.add(sent_id)
            tokens = _list(p, s["tokens"], where, f"{f}.tokens")
            if not all(isinstance(t, str) for t in tokens):
                raise DataFormatError(p, "expected a list of strings", record=where, field=f"{f}.tokens")
            out.append(RefExpression(
                dataset, split_by, split, ref_id, ann_id, image_id, category_id, inst.categories[category_id],
                sent_id, _fix_text(_str(p, s["sent"], where, f"{f}.sent")),
                _fix_text(_str(p, s["raw"], where, f"{f}.raw")), tuple(_fix_text(t) for t in tokens), box,
                images_dir / info.file_name, info.height, info.width, seg, inst.path))
    return out


def load_refer(root: str | Path, dataset: str, split_by: str | None = None, splits: str | Iterable[str] | None = None,
               images_dir: str | Path | None = None) -> list[RefExpression]:
    """Read one partition of a RefCOCO-family dataset, one ``RefExpression`` per sentence, in file order.

    Args:
        root: the folder holding ``<dataset>/`` (and usually ``images/train2014``).
        dataset: ``refcoco``, ``refcoco+``, ``refcocog`` (or ``refclef``, with its own ``images_dir``).
        split_by: the partition; default unc for refcoco/refcoco+, umd for refcocog (§1.4).
        splits: the split(s) to keep, matched as ``refer.getRefIds`` (``split_matches``); None keeps all.
        images_dir: folder of the JPEGs; default ``resolve_images_dir(root)``. Existence is not checked
            here (``check_refer_root`` does).

    Raises:
        DataFormatError: naming the pickle or json, the record and the field for a missing file, a missing
            or ill-typed field, a duplicate ref_id/sent_id, an ann_id, image id or category id that the
            instances file lacks, a ref disagreeing with its annotation, or a malformed segmentation.
        ValueError: an unknown dataset without ``split_by``, or an unknown split name.
    """
    if split_by is None:
        if dataset not in DEFAULT_SPLIT_BY:
            raise ValueError(f"no default partition for dataset {dataset!r}; pass split_by")
        split_by = DEFAULT_SPLIT_BY[dataset]
    wanted = None if splits is None else [splits] if isinstance(splits, str) else list(splits)
    for s in wanted or ():
        split_matches("", s)  # raises on an unknown split name before any file is read
    refs_file = refs_path(root, dataset, split_by)
    refs = read_refs_pickle(refs_file)
    inst = read_instances(Path(root) / dataset / "instances.json")
    return build_expressions(refs, refs_file, inst, dataset, split_by, wanted, resolve_images_dir(root, images_dir))
