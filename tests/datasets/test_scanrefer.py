"""ScanRefer reader/writer, ScanRefer's unique/multiple rule and the scene check (data spec §4, §5, §11)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataFormatError
from datasets.records import ReferRecord
from datasets.scannet.labels import LabelRow, read_label_tsv, write_label_tsv
from datasets.scanrefer import (
    check_records_against_scene,
    compare_with_lookup,
    load_scanrefer,
    scanrefer_model_text,
    scanrefer_unique_flags,
    simple_tokenise,
    unique_multiple_lookup,
    write_scanrefer,
)

VAL = "scanrefer_val_scene0011_00/ScanRefer_filtered_val.json"
TSV = "scannet_meta/scannetv2-labels.combined.tsv"
LOOKUP = "stmn_rgsan_lookup/lookup.json"

# §11: object id -> (object_name, number of descriptions) of scene0011_00 in ScanRefer val
SCENE0011_OBJECTS = {
    1: ("kitchen_cabinets", 5), 2: ("table", 5), 4: ("chair", 5), 5: ("chair", 5), 6: ("chair", 4),
    9: ("chair", 5), 11: ("chair", 5), 12: ("chair", 4), 13: ("chair", 5), 15: ("trash_can", 5),
    17: ("table", 5), 18: ("tv", 5), 19: ("refrigerator", 4), 20: ("cabinet", 4), 25: ("kitchen_counter", 5),
    27: ("refrigerator", 5),
}


# ---------------------------------------------------------------- real data (skipped when absent)

def test_real_val_scene0011_records(realdata: Path) -> None:
    recs = load_scanrefer(realdata / VAL)
    assert len(recs) == 76
    assert {r.scene_id for r in recs} == {"scene0011_00"}
    assert all(r.source == "scanrefer" and len(r.object_ids) == 1 and r.unique is None for r in recs)
    counts = Counter((r.object_ids[0], r.object_name) for r in recs)
    assert {o: (n, c) for (o, n), c in counts.items()} == SCENE0011_OBJECTS
    # file order is kept: the first val record is scene0011_00 / object 5 / ann 3 (§4)
    assert recs[0].sample_id == "scene0011_00/5/3"
    assert len({(r.object_ids[0], r.ann_id) for r in recs}) == 76


def test_real_unique_multiple_and_published_lookup(realdata: Path) -> None:
    recs = load_scanrefer(realdata / VAL, label_map=realdata / TSV)
    unique = [r for r in recs if r.unique]
    assert len(unique) == 5 and len(recs) - len(unique) == 71
    assert {r.object_ids[0] for r in unique} == {25}
    assert sorted(r.ann_id for r in unique) == [0, 1, 2, 3, 4]
    assert all(r.object_name == "kitchen_counter" for r in unique)
    assert Counter(r.group for r in recs) == {"unique": 5, "multiple": 71}

    matches, mismatches = compare_with_lookup(recs, realdata / LOOKUP)
    assert (matches, mismatches) == (76, [])
    published = json.loads((realdata / LOOKUP).read_text())["scene0011_00"]
    assert unique_multiple_lookup(recs, realdata / TSV) == {"scene0011_00": published}


def test_real_lookup_mismatch_is_reported(realdata: Path, tmp_path: Path) -> None:
    recs = load_scanrefer(realdata / VAL, label_map=realdata / TSV)
    lookup = json.loads((realdata / LOOKUP).read_text())
    lookup["scene0011_00"]["25"]["0"] = 1
    del lookup["scene0011_00"]["2"]
    path = tmp_path / "lookup.json"
    path.write_text(json.dumps(lookup))
    matches, mismatches = compare_with_lookup(recs, path)
    assert matches == 76 - 1 - 5
    assert ("scene0011_00/25/0", 0, 1) in mismatches
    assert sum(m.published is None for m in mismatches) == 5


def test_real_round_trip(realdata: Path, tmp_path: Path) -> None:
    src = realdata / VAL
    out = tmp_path / "out.json"
    recs = load_scanrefer(src, label_map=realdata / TSV)
    write_scanrefer(recs, out)
    assert json.loads(out.read_text()) == json.loads(src.read_text())
    assert out.read_bytes() == src.read_bytes()  # indent=4 reproduces the released file byte for byte
    again = load_scanrefer(out, label_map=realdata / TSV)
    assert again == recs


def test_real_model_text_and_tokens(realdata: Path) -> None:
    raw = json.loads((realdata / VAL).read_text())
    recs = load_scanrefer(realdata / VAL, normalise=False)
    for r, d in zip(recs, raw):
        assert r.description == r.raw == d["description"]
        assert scanrefer_model_text(r) == " ".join(d["token"][:78])
        assert scanrefer_model_text(r, max_words=4) == " ".join(d["token"][:4])
        assert simple_tokenise(d["description"]) == d["token"]  # the fallback agrees on the real records
    normalised = load_scanrefer(realdata / VAL)
    changed = [r for r in normalised if r.description != r.raw]
    assert len(changed) == 5 and all("  " in r.raw and "  " not in r.description for r in changed)


def test_real_records_exist_in_scene(realdata: Path) -> None:
    inst_path = realdata / "pointcept_scannet/scene0011_00/instance.npy"
    instance = np.load(inst_path)
    recs = load_scanrefer(realdata / VAL)
    assert check_records_against_scene(recs, instance, inst_path) == 76
    assert int((instance == 25).sum()) == 5743
    broken = np.where(instance == 25, -1, instance)
    with pytest.raises(DataFormatError) as e:
        check_records_against_scene(recs, broken, inst_path)
    assert e.value.field == "object_id" and "scene0011_00/25/" in e.value.record
    assert e.value.path == str(inst_path)


# ---------------------------------------------------------------- ScanRefer's rule on hand-built cases

def _labels(tmp_path: Path) -> Path:
    rows = [LabelRow("chair", 5, "chair"), LabelRow("table", 7, "table"), LabelRow("kitchen counter", 12, "counter"),
            LabelRow("trash can", 40, "otherprop"), LabelRow("tv", 25, "television"),
            LabelRow("shower curtain", 28, "shower curtain")]
    path = tmp_path / "labels.tsv"
    write_label_tsv(path, rows)
    return path


def _rec(scene: str, obj: int, ann: int, name: str, text: str = "the thing") -> ReferRecord:
    return ReferRecord(scene_id=scene, ann_id=ann, object_ids=(obj,), object_name=name, description=text,
                       source="scanrefer", raw=text)


def test_rule_others_share_class_17(tmp_path: Path) -> None:
    recs = [_rec("s0", 1, 0, "chair"), _rec("s0", 1, 1, "chair"), _rec("s0", 2, 0, "trash_can"),
            _rec("s0", 3, 0, "tv"), _rec("s0", 4, 0, "kitchen_counter"), _rec("s0", 5, 0, "shower_curtain")]
    # trash can (otherprop) and tv (television, not a ScanRefer class) are both "others" -> multiple;
    # "shower curtain" needs the "_" -> " " replacement to find its class
    assert scanrefer_unique_flags(recs, _labels(tmp_path)) == [True, True, False, False, True, True]


def test_rule_only_annotated_objects_count(tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    one = [_rec("s1", 7, 0, "chair"), _rec("s1", 8, 0, "table")]
    # the room may hold more chairs (instances 1..6), but only objects with descriptions count
    assert scanrefer_unique_flags(one, labels) == [True, True]
    # a chair described in another scene changes nothing ...
    assert scanrefer_unique_flags(one + [_rec("s2", 9, 0, "chair")], labels) == [True, True, True]
    # ... a second described chair in the same scene makes both multiple
    assert scanrefer_unique_flags(one + [_rec("s1", 9, 0, "chair")], labels) == [False, True, False]


def test_rule_missing_name_is_others(tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    assert scanrefer_unique_flags([_rec("s0", 1, 0, "weird_gadget")], labels) == [True]
    pair = [_rec("s0", 1, 0, "weird_gadget"), _rec("s0", 2, 0, "tv")]
    assert scanrefer_unique_flags(pair, labels) == [False, False]


def test_rule_first_occurrence_and_label_map_forms(tmp_path: Path) -> None:
    labels = _labels(tmp_path)
    # object 1's class comes from its first record (chair); its second record says "table", and the scene
    # then holds exactly one table-class object (2), so ScanRefer's code calls that record unique
    recs = [_rec("s0", 1, 0, "chair"), _rec("s0", 1, 1, "table"), _rec("s0", 2, 0, "table"),
            _rec("s0", 3, 0, "chair")]
    expected = [False, True, True, False]
    assert scanrefer_unique_flags(recs, labels) == expected
    assert scanrefer_unique_flags(recs, str(labels)) == expected
    assert scanrefer_unique_flags(recs, read_label_tsv(labels)) == expected
    lookup = unique_multiple_lookup(recs, labels)
    assert lookup == {"s0": {"1": {"0": 1, "1": 0}, "2": {"0": 0}, "3": {"0": 1}}}


def test_compare_needs_flags(tmp_path: Path) -> None:
    path = tmp_path / "lookup.json"
    path.write_text("{}")
    with pytest.raises(ValueError, match="label_map"):
        compare_with_lookup([_rec("s0", 1, 0, "chair")], path)


# ---------------------------------------------------------------- reading, writing, bad input

GOOD = {"scene_id": "scene0001_00", "object_id": "3", "object_name": "coffee_table", "ann_id": "0",
        "description": "a  low table.", "token": ["a", "low", "table", "."]}


def _write(tmp_path: Path, records: object) -> Path:
    path = tmp_path / "ScanRefer_filtered_val.json"
    path.write_text(json.dumps(records) if not isinstance(records, str) else records)
    return path


def test_load_casts_ids_and_normalises(tmp_path: Path) -> None:
    path = _write(tmp_path, [GOOD, {**GOOD, "ann_id": "1", "description": "the 50cm one"}])
    r0, r1 = load_scanrefer(path)
    assert r0.object_ids == (3,) and r0.ann_id == 0 and r0.sample_id == "scene0001_00/3/0"
    assert r0.description == "a low table." and r0.raw == "a  low table."
    assert r0.tokens == ("a", "low", "table", ".") and r0.eval_type is None
    assert r1.description == "the 50 cm one"
    assert load_scanrefer(path, normalise=False)[1].description == "the 50cm one"


def _error(tmp_path: Path, records: object) -> DataFormatError:
    path = _write(tmp_path, records)
    with pytest.raises(DataFormatError) as e:
        load_scanrefer(path)
    assert e.value.path == str(path)
    return e.value


@pytest.mark.parametrize(("change", "field"), [
    ({"object_id": "abc"}, "object_id"), ({"object_id": "1.5"}, "object_id"), ({"object_id": "-1"}, "object_id"),
    ({"object_id": True}, "object_id"), ({"ann_id": None}, "ann_id"), ({"description": ""}, "description"),
    ({"description": "   \n"}, "description"), ({"description": "... ?!"}, "description"),
    ({"description": 7}, "description"), ({"token": "a low table"}, "token"), ({"scene_id": ""}, "scene_id"),
    ({"object_name": None}, "object_name"),
])
def test_bad_field(tmp_path: Path, change: dict, field: str) -> None:
    bad = {**GOOD, "ann_id": "1", **change}
    err = _error(tmp_path, [GOOD, bad])
    assert err.field == field
    assert err.record == f"record 1 ({bad['scene_id']}/{bad['object_id']}/{bad['ann_id']})"  # key as in the file
    assert field in str(err) and "record 1" in str(err)


@pytest.mark.parametrize("missing", ["scene_id", "object_id", "object_name", "ann_id", "description"])
def test_missing_field(tmp_path: Path, missing: str) -> None:
    rec = {k: v for k, v in GOOD.items() if k != missing}
    err = _error(tmp_path, [rec])
    key_known = missing not in ("scene_id", "object_id", "ann_id")
    assert err.record == ("record 0 (scene0001_00/3/0)" if key_known else "record 0")
    assert err.field == missing and "missing" in err.problem


def test_token_is_optional(tmp_path: Path) -> None:
    rec = {k: v for k, v in GOOD.items() if k != "token"}
    (r,) = load_scanrefer(_write(tmp_path, [rec]))
    assert r.tokens is None
    assert scanrefer_model_text(r) == "a low table ."
    out = tmp_path / "written.json"
    write_scanrefer([r], out)
    assert json.loads(out.read_text()) == [{**rec, "token": ["a", "low", "table", "."]}]


def test_duplicate_key(tmp_path: Path) -> None:
    err = _error(tmp_path, [GOOD, {**GOOD, "description": "another text"}])
    assert err.record == "record 1 (scene0001_00/3/0)" and "first at record 0" in err.problem
    # the same ann_id for another object is fine: ann_id is per object
    assert len(load_scanrefer(_write(tmp_path, [GOOD, {**GOOD, "object_id": "4"}]))) == 2


@pytest.mark.parametrize("text", ['[{"scene_id": ', '{"scene_id": "x"}', "[1, 2]"])
def test_malformed_file(tmp_path: Path, text: str) -> None:
    err = _error(tmp_path, text)
    assert err.path.endswith("ScanRefer_filtered_val.json")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match="missing"):
        load_scanrefer(tmp_path / "nope.json")


def test_write_is_atomic_and_rejects_multi_target(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "out.json"
    write_scanrefer([_rec("s0", 1, 0, "chair")], out)
    assert [p.name for p in out.parent.iterdir()] == ["out.json"]  # no temporary file left behind
    bad = ReferRecord("s0", 0, (1, 2), "chair", "two chairs", "multi3drefer", eval_type="mt")
    with pytest.raises(ValueError, match="single-target"):
        write_scanrefer([bad], tmp_path / "bad.json")
    assert not (tmp_path / "bad.json").exists()


def test_scene_check_scene_selection() -> None:
    instance = np.array([-1, 0, 0, 1, 3])
    recs = [_rec("a", 1, 0, "chair"), _rec("b", 2, 0, "chair")]
    assert check_records_against_scene(recs, instance, "a.npy", scene_id="a") == 1
    with pytest.raises(DataFormatError) as e:
        check_records_against_scene(recs, instance, "b.npy", scene_id="b")
    assert (e.value.record, e.value.field) == ("record 1 (b/2/0)", "object_id")
    with pytest.raises(ValueError, match="several scenes"):
        check_records_against_scene(recs, instance, "a.npy")
    with pytest.raises(DataFormatError, match="integer instance"):
        check_records_against_scene(recs[:1], instance.astype(float), "a.npy")
