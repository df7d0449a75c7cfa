"""Generated RefCOCO-format images: determinism, the written layout read back raw, masks, unique expressions.

Everything is checked from the written files with plain ``pickle``/``json``/PIL/pycocotools; nothing
here uses a RefCOCO reader. The visible pixels of each object are re-drawn here from the polygons the
generator stored in ``scenes.json`` (PIL fills them in drawing order, later objects on top), and every
expression's stored program is re-resolved by this file's own implementation of the documented
semantics (``datasets/synthetic/images/expressions.py``).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage

from datasets.synthetic.images import generate_synthetic2d, image_file_name
from datasets.synthetic.images.contours import HoleError, decode, trace
from datasets.synthetic.images.expressions import GAP, REL_GAP
from datasets.synthetic.images.shapes import BY_NAME
from grounding.cli.main import main

REF_FIELDS = ["ref_id", "ann_id", "image_id", "category_id", "split", "sent_ids", "sentences", "file_name"]
SENT_FIELDS = {"sent_id", "sent", "raw", "tokens"}
ANN_FIELDS = {"id", "image_id", "category_id", "bbox", "segmentation", "area", "iscrowd"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("synthetic2d")
    return out, generate_synthetic2d(out, preset="tiny", seed=0)


def _load(root: Path) -> tuple[list[dict], dict, dict]:
    with open(root / "synthetic2d" / "refs(unc).p", "rb") as fh:
        refs = pickle.load(fh)
    instances = json.loads((root / "synthetic2d" / "instances.json").read_text())
    scenes = json.loads((root / "synthetic2d" / "scenes.json").read_text())
    return refs, instances, scenes


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_is_fast_and_byte_identical_per_seed(tiny: tuple[Path, Any], tmp_path: Path) -> None:
    root, summary = tiny
    assert summary.seconds < 3.0
    generate_synthetic2d(tmp_path / "again", preset="tiny", seed=0)
    first, again = _digests(root), _digests(tmp_path / "again")
    assert len(first) == 12 + 4 and first == again
    generate_synthetic2d(tmp_path / "other", preset="tiny", seed=1)
    other = _digests(tmp_path / "other")
    assert other["synthetic2d/refs(unc).p"] != first["synthetic2d/refs(unc).p"]


def test_refs_pickle_has_refcoco_fields(tiny: tuple[Path, Any]) -> None:
    root, summary = tiny
    refs, instances, _ = _load(root)
    anns = {a["id"]: a for a in instances["annotations"]}
    kinds = {c["id"]: c["supercategory"] for c in instances["categories"]}
    assert {r["split"] for r in refs} == {"train", "val", "testA", "testB"}
    assert len({r["ref_id"] for r in refs}) == len(refs)
    sent_ids = [s["sent_id"] for r in refs for s in r["sentences"]]
    assert len(set(sent_ids)) == len(sent_ids)
    for r in refs:
        assert list(r) == REF_FIELDS
        ann = anns[r["ann_id"]]
        assert ann["image_id"] == r["image_id"] and ann["category_id"] == r["category_id"]
        assert r["sent_ids"] == [s["sent_id"] for s in r["sentences"]] and 1 <= len(r["sentences"]) <= 3
        assert r["file_name"].startswith(image_file_name(r["image_id"])[:-4])
        for s in r["sentences"]:
            assert set(s) == SENT_FIELDS
            assert s["tokens"] == re.findall(r"[a-z0-9]+", s["raw"].lower())
            assert s["sent"] == " ".join(s["tokens"])
        if r["split"] == "testA":
            assert kinds[r["category_id"]] == "shape"
        if r["split"] == "testB":
            assert kinds[r["category_id"]] == "silhouette"
    meta = json.loads((root / "synthetic2d" / "meta.json").read_text())
    assert meta["preset"] == "tiny" and meta["seed"] == 0 and meta["counts"] == summary.counts
    for split, c in meta["counts"].items():
        assert c["refs"] == sum(r["split"] == split for r in refs)
        assert c["sentences"] == sum(len(r["sentences"]) for r in refs if r["split"] == split)


def _drawn_labels(image: dict) -> np.ndarray:
    """(H, W) int: index of the object whose pixel is on top, -1 for background, from scenes.json."""
    labels = np.full((image["height"], image["width"]), -1, dtype=np.int64)
    for k, obj in enumerate(image["objects"]):
        canvas = Image.new("L", (image["width"], image["height"]), 0)
        draw = ImageDraw.Draw(canvas)
        for poly in obj["polygons"]:
            draw.polygon([(float(x), float(y)) for x, y in zip(poly[0::2], poly[1::2])], fill=255)
        labels[np.asarray(canvas) > 0] = k
    return labels


def test_polygons_decode_to_the_visible_pixels(tiny: tuple[Path, Any]) -> None:
    root, _ = tiny
    _, instances, scenes = _load(root)
    anns = {a["id"]: a for a in instances["annotations"]}
    sizes = {im["id"]: (im["height"], im["width"]) for im in instances["images"]}
    occluded = 0
    assert len(anns) == sum(len(im["objects"]) for im in scenes["images"])
    for image in scenes["images"]:
        labels = _drawn_labels(image)
        assert sizes[image["image_id"]] == labels.shape
        for k, obj in enumerate(image["objects"]):
            ann = anns[obj["ann_id"]]
            assert set(ann) == ANN_FIELDS and ann["iscrowd"] == 0 and ann["image_id"] == image["image_id"]
            assert ann["category_id"] == BY_NAME[obj["category"]].id
            assert all(len(p) >= 6 and len(p) % 2 == 0 for p in ann["segmentation"])
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], *labels.shape))
            got = mask_utils.decode(rle).astype(bool)
            visible = labels == k
            iou = (got & visible).sum() / (got | visible).sum()
            assert iou > 0.95, (obj["ann_id"], iou)
            ys, xs = np.nonzero(got)
            assert ann["bbox"] == [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                   float(ys.max() - ys.min() + 1)]
            assert ann["area"] == float(got.sum())
            own = _drawn_labels({**image, "objects": [obj]}) == 0
            occluded += int((own & ~visible).any())
    assert occluded > 0  # the occlusion path is exercised


def test_jpegs_are_readable_with_their_sizes(tiny: tuple[Path, Any]) -> None:
    root, _ = tiny
    _, instances, _ = _load(root)
    for im in instances["images"]:
        assert im["file_name"] == image_file_name(im["id"])
        with Image.open(root / "images" / "train2014" / im["file_name"]) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == (im["width"], im["height"])


def _matches(np_: dict, obj: dict) -> bool:
    own = {"cls": obj["category"], "color": obj["color"], "size": obj["size"]}
    return all(v is None or own[k] == v for k, v in np_.items())


def _own_resolve(program: dict, objs: list[dict], width: int, height: int) -> int | None:
    """This test's reading of the documented semantics: the one index picked out, else None."""
    cands = [i for i, o in enumerate(objs) if _matches(program["np"], o)]
    if program["kind"] == "attr":
        return cands[0] if len(cands) == 1 else None
    if program["kind"] in ("extreme", "ordinal"):
        axis, sign = {"left": (0, 1), "right": (0, -1), "top": (1, 1), "bottom": (1, -1)}[program["dir"]]
        rank = program.get("rank", 1)
        if len(cands) < (2 if program["kind"] == "extreme" else max(3, rank)):
            return None
        pos = sorted((sign * objs[i]["center"][axis], i) for i in cands)
        gap = GAP * (width, height)[axis]
        r = rank - 1
        if (r > 0 and pos[r][0] - pos[r - 1][0] < gap) or (r + 1 < len(pos) and pos[r + 1][0] - pos[r][0] < gap):
            return None
        return pos[r][1]
    anchors = [i for i, o in enumerate(objs) if _matches(program["anchor"], o)]
    if len(anchors) != 1:
        return None
    a = objs[anchors[0]]["center"]
    clear_yes, unsure = [], False
    for i in cands:
        if i == anchors[0]:
            continue
        c = objs[i]["center"]
        on = {"left": a[0] - c[0], "right": c[0] - a[0], "above": a[1] - c[1], "below": c[1] - a[1]}[program["rel"]]
        off = abs(c[1] - a[1]) if program["rel"] in ("left", "right") else abs(c[0] - a[0])
        side = width if program["rel"] in ("left", "right") else height
        if on >= REL_GAP * side and off <= on:
            clear_yes.append(i)
        elif on > 0:
            unsure = True
    return clear_yes[0] if len(clear_yes) == 1 and not unsure else None


def test_every_expression_picks_out_its_object_alone(tiny: tuple[Path, Any]) -> None:
    root, _ = tiny
    refs, _, scenes = _load(root)
    sentences = {s["sent_id"]: (r, s) for r in refs for s in r["sentences"]}
    kinds = set()
    stored = 0
    for image in scenes["images"]:
        objs, w, h = image["objects"], image["width"], image["height"]
        for entry in image["sentences"]:
            ref, sent = sentences[entry["sent_id"]]
            program = entry["program"]
            kinds.add(program["kind"])
            target = _own_resolve(program, objs, w, h)
            assert target is not None and objs[target]["ann_id"] == ref["ann_id"] == entry["ann_id"], sent["raw"]
            words = " " + sent["sent"] + " "
            for np_ in [program["np"]] + ([program["anchor"]] if "anchor" in program else []):
                if np_["color"]:
                    assert f" {np_['color']} " in words
                if np_["cls"]:
                    assert any(f" {n} " in words for n in BY_NAME[np_["cls"]].nouns), sent["raw"]
            stored += 1
    assert stored == len(sentences)
    assert kinds == {"attr", "extreme", "ordinal", "relation"}


def test_words_are_needed(tiny: tuple[Path, Any]) -> None:
    """A model that ignores the words gives one answer per image; here that answer is often wrong."""
    root, summary = tiny
    refs, _, scenes = _load(root)
    targets: dict[int, list[int]] = {}
    for r in refs:
        targets.setdefault(r["image_id"], []).extend([r["ann_id"]] * len(r["sentences"]))
    best_constant = sum(max(t.count(a) for a in set(t)) for t in targets.values()) / sum(map(len, targets.values()))
    assert best_constant < 0.85  # an upper bound: even knowing each image's most-referred object
    assert summary.stats["chance_text_free"] < 0.34  # 3-6 objects per image
    assert summary.stats["with_distractor"] > 0.5 and summary.stats["no_single_attribute"] > 0.2
    n_objects = [len(im["objects"]) for im in scenes["images"]]
    assert min(n_objects) >= 3 and max(n_objects) <= 6


def test_tracing_is_exact_and_refuses_holes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        blob = rng.random((10, 12)) < 0.55
        labels, n = ndimage.label(blob, structure=np.ones((3, 3), dtype=bool))
        for k in range(1, n + 1):
            comp = labels == k
            if (ndimage.binary_fill_holes(comp) & ~comp).any():
                with pytest.raises(HoleError):
                    trace(comp)
                continue
            ring = trace(comp)
            assert (decode([ring.reshape(-1).astype(float).tolist()], *comp.shape) == comp).all()


def test_cli_writes_the_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prepare", "synthetic2d", "--out", str(tmp_path), "--preset", "tiny", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "testA" in out and "sentences" in out
    for name in ("refs(unc).p", "instances.json", "scenes.json", "meta.json"):
        assert (tmp_path / "synthetic2d" / name).is_file()
    assert len(list((tmp_path / "images" / "train2014").glob("COCO_train2014_*.jpg"))) == 12
