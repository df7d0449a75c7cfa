"""RefCOCO-family reader on a tiny refer layout, split rules, named errors, CSV exports and the CLI check."""

from __future__ import annotations

import collections
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from datasets.errors import DataFormatError
from datasets.refcoco import (
    OFFICIAL_REF_COUNTS,
    OFFICIAL_SENTENCE_COUNTS,
    RefExpression,
    load_refer,
    split_matches,
)
from datasets.refcoco_check import check_refer_root
from datasets.refcoco_csv import load_refcoco_csv
from grounding.cli.main import main


def py2_pickle(obj: Any) -> bytes:
    """Protocol 2 as Python 2's cPickle writes plain data: every ``str`` an 8-bit string (UTF-8 bytes)."""
    out = bytearray(b"\x80\x02")

    def w(o: Any) -> None:
        if isinstance(o, int):
            out.extend(b"J" + struct.pack("<i", o))
        elif isinstance(o, float):
            out.extend(b"G" + struct.pack(">d", o))
        elif isinstance(o, str):
            b = o.encode("utf-8")
            out.extend((b"U" + bytes([len(b)]) if len(b) < 256 else b"T" + struct.pack("<i", len(b))) + b)
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                w(x)
            out.extend(b"e")
        else:
            out.extend(b"}(")
            for k, v in o.items():
                w(k)
                w(v)
            out.extend(b"u")

    w(obj)
    return bytes(out + b".")


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def sent(sid: int, text: str) -> dict[str, Any]:
    return {"sent_id": sid, "sent": text, "raw": text.capitalize() + ".", "tokens": text.split()}


def ref(ref_id: int, ann_id: int, image_id: int, cat: int, split: str, *sents: dict) -> dict[str, Any]:
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "category_id": cat, "split": split,
            "sent_ids": [s["sent_id"] for s in sents], "sentences": list(sents),
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg"}


def instances() -> dict[str, Any]:
    return {
        "images": [{"id": 10, "file_name": "COCO_train2014_000000000010.jpg", "height": 6, "width": 8},
                   {"id": 20, "file_name": "COCO_train2014_000000000020.jpg", "height": 5, "width": 7}],
        "annotations": [
            {"id": 100, "image_id": 10, "category_id": 1, "bbox": [2, 1, 4, 3], "segmentation": [rect(2, 1, 6, 4)]},
            {"id": 101, "image_id": 10, "category_id": 3, "bbox": [0, 0, 5, 5],
             "segmentation": [rect(0, 0, 3, 3), rect(2, 2, 5, 5)]},
            {"id": 200, "image_id": 20, "category_id": 3, "bbox": [1, 1, 2, 2], "segmentation": [rect(1, 1, 3, 3)]},
            {"id": 201, "image_id": 20, "category_id": 1, "bbox": [4.5, 0.5, 2, 3], "segmentation": [rect(4, 0, 6, 3)]},
        ],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 3, "name": "car", "supercategory": "vehicle"}],
    }


def refs() -> list[dict[str, Any]]:
    return [ref(1, 100, 10, 1, "train", sent(11, "man on left"), sent(12, "red fruit purée")),
            ref(2, 101, 10, 3, "testA", sent(21, "car")),
            ref(3, 200, 20, 3, "testB", sent(31, "small car"), sent(32, "gray car")),
            ref(4, 201, 20, 1, "testAB", sent(41, "person right")),
            ref(5, 201, 20, 1, "val", sent(51, "guy"))]


def write_layout(root: Path, refs_data: list | None = None, inst: dict | None = None, py2: bool = True) -> Path:
    """refcoco/ (unc, Python-2 pickle), refcocog/ (umd, Python-3 pickle), images/train2014 JPEGs."""
    for dataset, name in (("refcoco", "refs(unc).p"), ("refcocog", "refs(umd).p")):
        (root / dataset).mkdir(parents=True, exist_ok=True)
        data = refs() if refs_data is None else refs_data
        blob = py2_pickle(data) if (py2 and dataset == "refcoco") else pickle.dumps(data, protocol=4)
        (root / dataset / name).write_bytes(blob)
        (root / dataset / "instances.json").write_text(json.dumps(instances() if inst is None else inst))
    (root / "images" / "train2014").mkdir(parents=True, exist_ok=True)
    for img in instances()["images"]:
        Image.new("RGB", (img["width"], img["height"]), (90, 120, 30)).save(
            root / "images" / "train2014" / img["file_name"], quality=90)
    return root


def test_reads_tiny_layout(tmp_path: Path) -> None:
    root = write_layout(tmp_path)
    exprs = load_refer(root, "refcoco")
    assert [e.sent_id for e in exprs] == [11, 12, 21, 31, 32, 41, 51]
    e = exprs[0]
    assert isinstance(e, RefExpression) and e.sample_id == "refcoco/11"
    assert (e.dataset, e.split_by, e.split, e.ref_id, e.ann_id, e.image_id) == ("refcoco", "unc", "train", 1, 100, 10)
    assert (e.category_id, e.category_name, e.sentence, e.raw) == (1, "person", "man on left", "Man on left.")
    assert e.tokens == ("man", "on", "left") and e.box == (2.0, 1.0, 4.0, 3.0) and e.box_xyxy == (2, 1, 6, 4)
    assert e.image_file == root / "images" / "train2014" / "COCO_train2014_000000000010.jpg"
    assert e.image_file.is_file() and (e.height, e.width) == (6, 8)
    assert exprs[1].sentence == "red fruit purée"  # Python-2 UTF-8 bytes re-decoded
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:4, 2:6] = True
    np.testing.assert_array_equal(e.mask(), expected)
    union = exprs[2].mask()
    assert union.sum() == 9 + 9 - 1 and union.max() == 1  # overlapping parts: union, not sum
    assert hash(e) == hash(exprs[0])


def test_python2_and_python3_pickles_agree(tmp_path: Path) -> None:
    root = write_layout(tmp_path)
    (root / "refcoco" / "refs(google).p").write_bytes(pickle.dumps(refs(), protocol=2))
    a = load_refer(root, "refcoco")
    b = load_refer(root, "refcoco", split_by="google")
    assert [(x.sentence, x.raw, x.tokens) for x in a] == [(x.sentence, x.raw, x.tokens) for x in b]
    assert {x.split_by for x in load_refer(root, "refcocog")} == {"umd"}  # default partition


@pytest.mark.parametrize(("wanted", "sent_ids"), [
    (["train"], [11, 12]), (["val"], [51]), (["testA"], [21, 41]), (["testB"], [31, 32, 41]),
    (["test"], [21, 31, 32, 41]), (["testAB"], [41]), (["testA", "testB"], [21, 31, 32, 41]),
])
def test_split_selection(tmp_path: Path, wanted: list[str], sent_ids: list[int]) -> None:
    root = write_layout(tmp_path)
    assert [e.sent_id for e in load_refer(root, "refcoco", splits=wanted)] == sent_ids
    if len(wanted) == 1:
        assert [e.sent_id for e in load_refer(root, "refcoco", splits=wanted[0])] == sent_ids


def test_split_rules() -> None:
    assert split_matches("testAB", "testA") and split_matches("testAB", "testB")
    assert split_matches("testB", "test") and not split_matches("testB", "testA")
    assert not split_matches("trainval", "train") and not split_matches("testAB", "testBC")
    with pytest.raises(ValueError, match="unknown split"):
        split_matches("train", "training")


def test_images_dir_alternatives(tmp_path: Path) -> None:
    root = write_layout(tmp_path)
    (root / "images" / "train2014").rename(root / "train2014")
    assert load_refer(root, "refcoco")[0].image_file.parent == root / "train2014"
    assert load_refer(root, "refcoco", images_dir=tmp_path / "x")[0].image_file.parent == tmp_path / "x"


def mutate_ref(i: int, key: str, value: Any = None, sentence: int | None = None) -> list[dict]:
    data = refs()
    target = data[i] if sentence is None else data[i]["sentences"][sentence]
    if value is None:
        del target[key]
    else:
        target[key] = value
    return data


def mutate_inst(section: str, i: int, key: str, value: Any = None) -> dict:
    data = instances()
    if value is None:
        del data[section][i][key]
    else:
        data[section][i][key] = value
    return data


REFS, INST = "refcoco/refs(unc).p", "refcoco/instances.json"
BAD = [  # (refs, instances, file, record, field, message)
    (mutate_ref(1, "ann_id"), None, REFS, "ref 1 (ref_id 2)", "ann_id", "missing"),
    (mutate_ref(1, "ann_id", 999), None, REFS, "ref 1 (ref_id 2)", "ann_id", "not an annotation"),
    (mutate_ref(0, "ref_id", "1"), None, REFS, "ref 0", "ref_id", "integer"),
    (mutate_ref(1, "ref_id", 1), None, REFS, "ref 1 (ref_id 1)", "ref_id", "duplicate"),
    (mutate_ref(2, "image_id", 10), None, REFS, "ref 2 (ref_id 3)", "image_id", "differs"),
    (mutate_ref(2, "category_id", 1), None, REFS, "ref 2 (ref_id 3)", "category_id", "differs"),
    (mutate_ref(2, "sentences", []), None, REFS, "ref 2 (ref_id 3)", "sentences", "at least one"),
    (mutate_ref(0, "sent", 5, sentence=1), None, REFS, "ref 0 (ref_id 1)", "sentences[1].sent", "string"),
    (mutate_ref(0, "raw", sentence=0), None, REFS, "ref 0 (ref_id 1)", "sentences[0].raw", "missing"),
    (mutate_ref(0, "tokens", "a b", sentence=0), None, REFS, "ref 0 (ref_id 1)", "sentences[0].tokens", "list"),
    (mutate_ref(2, "sent_id", 11, sentence=0), None, REFS, "ref 2 (ref_id 3)", "sentences[0].sent_id", "duplicate"),
    (mutate_ref(3, "split", ""), None, REFS, "ref 3 (ref_id 4)", "split", "non-empty"),
    (None, mutate_inst("images", 0, "height"), INST, "image 0 (id 10)", "height", "missing"),
    (None, mutate_inst("images", 1, "width", 0), INST, "image 1 (id 20)", "width", "positive"),
    (None, mutate_inst("annotations", 0, "bbox", [1, 2, 3]), INST, "annotation 0 (id 100)", "bbox", "x, y, w, h"),
    (None, mutate_inst("annotations", 2, "image_id", 30), INST, "annotation 2 (id 200)", "image_id", "not in"),
    (None, mutate_inst("annotations", 1, "segmentation", [[0, 0, 1]]), INST, "annotation 1 (id 101)",
     "segmentation", "odd"),
    (None, mutate_inst("categories", 1, "name", ""), INST, "category 1 (id 3)", "name", "non-empty"),
]


@pytest.mark.parametrize(("refs_data", "inst", "file", "record", "field", "message"), BAD)
def test_bad_input_names_file_record_field(tmp_path: Path, refs_data: list | None, inst: dict | None, file: str,
                                           record: str, field: str, message: str) -> None:
    root = write_layout(tmp_path, refs_data, inst)
    with pytest.raises(DataFormatError, match=message) as info:
        load_refer(root, "refcoco")
    e = info.value
    assert (e.path, e.record, e.field) == (str(root / file), record, field)
    assert str(root / file) in str(e) and record in str(e) and f"field '{field}'" in str(e)


def test_bad_files(tmp_path: Path) -> None:
    root = write_layout(tmp_path)
    missing_cat = instances()
    del missing_cat["categories"][0]
    (root / "refcoco" / "instances.json").write_text(json.dumps(missing_cat))
    with pytest.raises(DataFormatError, match="category id 1") as info:
        load_refer(root, "refcoco")
    assert info.value.field == "categories"
    (root / "refcoco" / "instances.json").write_text("{")
    with pytest.raises(DataFormatError, match="not valid JSON"):
        load_refer(root, "refcoco")
    for blob, message in ((b"garbage", "not a readable"), (pickle.dumps({"a": 1}), "list of refs"),
                          (pickle.dumps([collections.OrderedDict()]), "plain data")):
        (root / "refcoco" / "refs(unc).p").write_bytes(blob)
        with pytest.raises(DataFormatError, match=message):
            load_refer(root, "refcoco")
    with pytest.raises(DataFormatError, match="refs pickle is missing"):
        load_refer(root, "refcoco+")
    with pytest.raises(ValueError, match="unknown split"):
        load_refer(root, "refcocog", splits=["testD"])


def test_csv_reader_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "refcoco+_unc_testA.csv"
    good.write_text('uid,ref_id,img_id,sent_id,sent,bbox\n'
                    '45_0,45,581282,128,"guy, left","[3.24, 159.31, 156.4, 312.8]"\n')
    (b,) = load_refcoco_csv(good)
    assert (b.dataset, b.split_by, b.split, b.uid, b.ref_id, b.image_id, b.sent_id) == (
        "refcoco+", "unc", "testA", "45_0", 45, 581282, 128)
    assert b.sentence == "guy, left" and b.box == (3.24, 159.31, 156.4, 312.8) and b.sample_id == "refcoco+/128"
    assert b.image_file_name == "COCO_train2014_000000581282.jpg"
    bad = tmp_path / "refcoco_unc_val.csv"
    for body, field, message in (('45_0,45,1,x,"a","[1, 2, 3, 4]"', "sent_id", "integer"),
                                 ('45_0,45,1,2,"a","[1, 2, 3]"', "bbox", "x, y, w, h"),
                                 ('45_0,45,1,2,"a","oops"', "bbox", "x, y, w, h")):
        bad.write_text("uid,ref_id,img_id,sent_id,sent,bbox\n" + body + "\n")
        with pytest.raises(DataFormatError, match=message) as info:
            load_refcoco_csv(bad)
        assert (info.value.record, info.value.field) == ("line 2 (uid 45_0)", field)
    bad.write_text("uid,ref_id,sent\n")
    with pytest.raises(DataFormatError, match="img_id"):
        load_refcoco_csv(bad)
    with pytest.raises(DataFormatError, match="file name"):
        load_refcoco_csv(tmp_path / "refcoco.csv")


def test_csv_exports_match_official_counts(realdata: Path) -> None:
    files = sorted((realdata / "refcoco_csv" / "data").glob("*.csv"))
    assert len(files) == 9
    checked = 0
    for f in files:
        rows = load_refcoco_csv(f)
        key = (rows[0].dataset, rows[0].split_by, rows[0].split)
        assert len(rows) == OFFICIAL_SENTENCE_COUNTS[key], f.name
        assert len({r.sent_id for r in rows}) == len(rows)
        if key in OFFICIAL_REF_COUNTS:
            assert len({r.ref_id for r in rows}) == OFFICIAL_REF_COUNTS[key], f.name
            checked += 1
    assert checked == 5  # refcoco unc val/testA/testB, refcocog umd val/test
    first = load_refcoco_csv(realdata / "refcoco_csv" / "data" / "refcoco_unc_testA.csv")[0]
    assert (first.ref_id, first.image_id, first.sent_id, first.sentence) == (47, 581282, 136, "person bottom left")
    assert first.box == (3.24, 159.31, 156.4, 312.81)


def test_check_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_layout(tmp_path)
    report = check_refer_root(root)
    assert report.ok and report.absent_datasets == ["refcoco+"] and report.images_referenced == 2
    (unc,) = [p for p in report.partitions if p.dataset == "refcoco"]
    assert unc.refs == {"train": 1, "testA": 1, "testB": 1, "testAB": 1, "val": 1}
    assert unc.sentences == {"train": 2, "testA": 1, "testB": 2, "testAB": 1, "val": 1} and unc.images == 2
    assert main(["prepare", "refcoco", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "refcoco/unc: 5 refs, 7 sentences, 2 images" in out and "refcocog/umd" in out
    assert "testB   refs      1  sentences       2" in out and "not present: refcoco+" in out
    assert "refcoco/unc/train: 2 sentences (official 120624), 1 refs (official 42404)" in out
    assert out.rstrip().endswith("OK")

    (root / "images" / "train2014" / "COCO_train2014_000000000020.jpg").unlink()
    (root / "refcocog" / "instances.json").unlink()
    assert main(["prepare", "refcoco", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "missing images: 1 of 2" in out and "COCO_train2014_000000000020.jpg" in out
    assert f"missing file: {root / 'refcocog' / 'instances.json'}" in out
    assert out.rstrip().endswith("FAILED: 1 missing file(s), 1 missing image(s)")

    assert main(["prepare", "refcoco", "--root", str(root), "--images", str(tmp_path / "none")]) == 1
    assert f"missing file: {tmp_path / 'none'}" in capsys.readouterr().out
    assert main(["prepare", "refcoco", "--root", str(tmp_path / "absent")]) == 2
    assert "RefCOCO root folder not found" in capsys.readouterr().err
