"""The attribute curriculum of the generated pictures: queries that single out one object, and the epoch mixing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.errors import DataFormatError
from datasets.refcoco import load_refer
from datasets.refimage import refer_image_dataset
from datasets.synthetic.images.curriculum import AttributeCurriculum, attribute_curriculum, attribute_queries
from datasets.synthetic.images.shapes import BY_NAME
from datasets.transforms.image2d import Letterbox


@pytest.fixture(scope="module")
def root(synthetic2d_tiny: Path) -> Path:
    return synthetic2d_tiny  # tests/conftest.py: read-only


def test_queries_single_out_their_object_by_colour_class_or_both(root: Path) -> None:
    train = load_refer(root, "synthetic2d", splits="train")
    scenes = {s["image_id"]: s for s in json.loads((root / "synthetic2d" / "scenes.json").read_text())["images"]}
    anns = {a["id"]: a for a in json.loads((root / "synthetic2d" / "instances.json").read_text())["annotations"]}
    queries = attribute_queries(train, root / "synthetic2d" / "scenes.json")
    assert queries and {q.image_id for q in queries} == {r.image_id for r in train}  # training pictures only
    assert all(q.sent_id < 0 and q.ref_id < 0 for q in queries) and len({q.sent_id for q in queries}) == len(queries)
    seen_kinds = set()
    for q in queries:
        objects = scenes[q.image_id]["objects"]
        target = next(o for o in objects if o["ann_id"] == q.ann_id)
        words = set(q.tokens)
        said_colour = target["color"] in words
        said_class = bool(words & set(BY_NAME[target["category"]].nouns))
        assert said_colour or said_class, q.raw
        # no size word, and the said attributes match no other object of the picture
        assert not words & {"small", "little", "tiny", "large", "big"}, q.raw
        same = [o for o in objects if (not said_colour or o["color"] == target["color"])
                and (not said_class or o["category"] == target["category"])]
        assert same == [target], q.raw
        seen_kinds.add((said_colour, said_class))
        assert q.category_name == target["category"] and q.mask().sum() > 0
        np.testing.assert_allclose(q.box, anns[q.ann_id]["bbox"])  # the object's own annotation
    assert seen_kinds == {(True, False), (False, True), (True, True)}
    again = attribute_queries(train, root / "synthetic2d" / "scenes.json")
    assert [q.raw for q in again] == [q.raw for q in queries]  # wording is seeded


def test_mixing_follows_the_schedule_and_is_reproducible(root: Path) -> None:
    def build(schedule):
        return attribute_curriculum(root, "synthetic2d", "train", Letterbox(64, train=True, scale_steps=1),
                                    schedule=schedule)

    ds = build([1.0, 0.0])
    n = len(ds)
    assert n == len(ds.real)  # an epoch is as long as the real expressions
    ds.set_epoch(0)
    assert all(int(ds[i]["sample_id"].split("/")[1]) < 0 for i in range(n))
    ds.set_epoch(5)  # the last rate holds for later epochs
    assert all(int(ds[i]["sample_id"].split("/")[1]) >= 0 for i in range(n))
    half, other = build([0.5]), build([0.5])
    half.set_epoch(2)
    other.set_epoch(2)
    ids = [half[i]["sample_id"] for i in range(n)]
    assert ids == [other[i]["sample_id"] for i in range(n)]
    replaced = sum(int(s.split("/")[1]) < 0 for s in ids)
    assert 0.2 * n < replaced < 0.8 * n, (replaced, n)
    batch = half.collate([half[0], half[1]])
    assert batch.images.shape == (2, 3, 64, 64)
    # schedule [0] (the curriculum off) gives exactly the plain dataset's items: same pixels, text, target
    off = build([0])
    plain = refer_image_dataset(root, "synthetic2d", "train", Letterbox(64, train=True, scale_steps=1))
    for epoch in (0, 3):
        off.set_epoch(epoch)
        plain.set_epoch(epoch)
        for i in range(0, n, max(1, n // 5)):
            a, b = off[i], plain[i]
            assert a["sample_id"] == b["sample_id"] and a["text"] == b["text"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["gt_original"], b["gt_original"])


def test_bad_schedule_and_missing_scenes_file_are_named(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="probabilities"):
        AttributeCurriculum(None, [], [1.5])  # type: ignore[arg-type]
    train = load_refer(root, "synthetic2d", splits="train")
    with pytest.raises(DataFormatError, match="scenes.json"):
        attribute_queries(train, tmp_path / "scenes.json")
    scenes = json.loads((root / "synthetic2d" / "scenes.json").read_text())
    del scenes["images"][0]["objects"][0]["color"]
    bad = tmp_path / "scenes.json"
    bad.write_text(json.dumps(scenes))
    with pytest.raises(DataFormatError, match=f"image_id {scenes['images'][0]['image_id']}") as err:
        attribute_queries(load_refer(root, "synthetic2d", splits=["train", "val", "test"]), bad)
    assert err.value.field == "objects"
    scenes = json.loads((root / "synthetic2d" / "scenes.json").read_text())
    scenes["images"][0]["objects"][0]["ann_id"] = 10**9  # an object without an annotation in instances.json
    bad.write_text(json.dumps(scenes))
    with pytest.raises(DataFormatError, match="is not an annotation of") as err:
        attribute_queries(load_refer(root, "synthetic2d", splits=["train", "val", "test"]), bad)
    assert err.value.field == "ann_id" and "object 0" in err.value.record
