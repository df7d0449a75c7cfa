"""Per-pixel attribute maps of every object of a picture (datasets/object_maps.py): labels against the files,
placement on the letterbox canvas, the dataset field, collation and errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.batch2d import ReferBatch2D
from datasets.coco_masks import decode_segmentation
from datasets.errors import DataFormatError
from datasets.object_maps import IGNORE, ObjectMaps, place_label_maps
from datasets.refimage import refer_image_dataset
from datasets.synthetic.images.scene import COLORS
from datasets.transforms.image2d import Letterbox


@pytest.fixture(scope="module")
def root(synthetic2d_tiny: Path) -> Path:
    return synthetic2d_tiny  # tests/conftest.py: read-only


def _files(root: Path) -> tuple[dict, dict]:
    inst = json.loads((root / "synthetic2d" / "instances.json").read_text())
    scenes = json.loads((root / "synthetic2d" / "scenes.json").read_text())
    return inst, scenes


def test_labels_are_each_objects_category_colour_and_size(root: Path) -> None:
    inst, scenes = _files(root)
    maps = ObjectMaps(root / "synthetic2d" / "instances.json", ["category", "color", "size"],
                      scenes_file=root / "synthetic2d" / "scenes.json")
    assert maps.num_classes == [len(inst["categories"]) + 1, len(COLORS) + 1, 3]
    cats = sorted(c["id"] for c in inst["categories"])
    objects = {o["ann_id"]: o for s in scenes["images"] for o in s["objects"]}
    image = scenes["images"][0]
    info = next(i for i in inst["images"] if i["id"] == image["image_id"])
    out = maps(image["image_id"])
    assert out.shape == (3, info["height"], info["width"]) and out.dtype == np.uint8
    covered = np.zeros((info["height"], info["width"]), dtype=bool)
    anns = [a for a in inst["annotations"] if a["image_id"] == image["image_id"]]
    assert len(anns) == len(image["objects"]) >= 3
    for a in anns:
        m = decode_segmentation(a["segmentation"], info["height"], info["width"])
        obj = objects[a["id"]]
        assert m.sum() > 0
        assert (out[0][m] == cats.index(a["category_id"]) + 1).all()
        assert (out[1][m] == COLORS.index(obj["color"]) + 1).all()
        assert (out[2][m] == ("small", "large").index(obj["size"]) + 1).all()
        covered |= m
    assert (out[:, ~covered] == 0).all()  # background everywhere else


def test_category_maps_need_no_scenes_file_but_colour_does(root: Path, tmp_path: Path) -> None:
    maps = ObjectMaps(root / "synthetic2d" / "instances.json")  # category only: any RefCOCO partition
    assert maps.kinds == ("category",) and maps.num_classes == [12]
    with pytest.raises(DataFormatError, match="scenes.json"):
        ObjectMaps(root / "synthetic2d" / "instances.json", ["color"], scenes_file=tmp_path / "none.json")
    with pytest.raises(ValueError, match="distinct names"):
        ObjectMaps(root / "synthetic2d" / "instances.json", ["category", "shape"])
    _, scenes = _files(root)
    scenes["images"][1]["objects"][0]["color"] = "teal"
    bad = tmp_path / "scenes.json"
    bad.write_text(json.dumps(scenes))
    with pytest.raises(DataFormatError) as err:
        ObjectMaps(root / "synthetic2d" / "instances.json", ["color"], scenes_file=bad)
    text = str(err.value)
    assert str(bad) in text and f"image_id {scenes['images'][1]['image_id']}, object 0" in text and "color" in text
    with pytest.raises(DataFormatError, match="no such image"):
        maps(10 ** 9)
    inst, _ = _files(root)
    del inst["annotations"][2]["image_id"]
    broken = tmp_path / "instances.json"
    broken.write_text(json.dumps(inst))
    with pytest.raises(DataFormatError) as err:
        ObjectMaps(broken)
    assert str(broken) in str(err.value) and f"annotation 2 (id {inst['annotations'][2]['id']})" in str(err.value)
    assert "image_id" in str(err.value)


def test_place_label_maps_flips_resizes_and_pads_with_ignore() -> None:
    maps = torch.tensor([[[1, 2, 3, 4],
                          [5, 6, 7, 8]]], dtype=torch.uint8)  # (1, 2, 4)
    canvas = place_label_maps(maps, flipped=True, pad_tl=(1, 0), resized_hw=(4, 8), size=8)
    assert canvas.shape == (1, 8, 8) and canvas.dtype == torch.long
    assert (canvas[:, :1] == IGNORE).all() and (canvas[:, 5:] == IGNORE).all()
    expected = torch.tensor([[4, 4, 3, 3, 2, 2, 1, 1]] * 2 + [[8, 8, 7, 7, 6, 6, 5, 5]] * 2)
    assert torch.equal(canvas[0, 1:5], expected)
    same = place_label_maps(maps, flipped=False, pad_tl=(0, 0), resized_hw=(2, 4), size=4)
    assert torch.equal(same[0, :2], maps[0].long()) and (same[0, 2:] == IGNORE).all()


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_dataset_items_carry_maps_aligned_with_the_target(root: Path, flip_prob: float) -> None:
    transform = Letterbox(64, train=True, scale_steps=1, jitter_prob=0.0, flip_prob=flip_prob)
    ds = refer_image_dataset(root, "synthetic2d", "train", transform, object_maps=["category", "color"])
    plain = refer_image_dataset(root, "synthetic2d", "train", transform)
    cats = ds.object_maps.category_index
    for i in range(0, len(ds), max(1, len(ds) // 12)):
        item = ds[i]
        rec, maps, target = item["record"], item["attr_maps"], item["gt_mask"] > 0.5
        assert maps.shape == (2, 64, 64) and "attr_maps" not in plain[i]
        assert (maps[:, ~item["valid"]] == IGNORE).all() and (maps[:, item["valid"]] >= 0).all()
        # the referred object's pixels carry its category (nearest vs bilinear resizing differ at the edges)
        agree = (maps[0][target] == cats[rec.category_id] + 1).float().mean()
        assert agree > 0.85, (i, float(agree))
    batch = ReferBatch2D.collate([ds[0], ds[1]])
    assert batch.attr_maps is not None and batch.attr_maps.shape == (2, 2, 64, 64)
    assert torch.equal(batch.to("cpu").attr_maps, batch.attr_maps)
    assert ReferBatch2D.collate([plain[0], plain[1]]).attr_maps is None
    with pytest.raises(ValueError, match="all or none"):
        ReferBatch2D.collate([ds[0], plain[1]])


def test_curriculum_queries_carry_the_same_maps(root: Path, tmp_path: Path) -> None:
    from datasets.synthetic.images.curriculum import attribute_curriculum

    ds = attribute_curriculum(root, "synthetic2d", "train", Letterbox(64, train=True, scale_steps=1),
                              schedule=[1.0], object_maps=["category"])
    assert ds.queries.object_maps is ds.real.object_maps
    assert all(ds[i]["record"].sent_id < 0 and ds[i]["attr_maps"].shape == (1, 64, 64) for i in range(4))
    # RefCOCO-layout folders without scenes.json can still have category maps
    copy = tmp_path / "root"
    shutil.copytree(root, copy)
    (copy / "synthetic2d" / "scenes.json").unlink()
    cat_only = refer_image_dataset(copy, "synthetic2d", "val", Letterbox(64), object_maps=["category"])
    assert cat_only[0]["attr_maps"].shape == (1, 64, 64)
