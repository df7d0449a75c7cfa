"""Multi3DRefer reader/writer and its load report (data spec §6)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from datasets.errors import DataFormatError
from datasets.multi3drefer import (
    Multi3DReferRecords,
    expected_target_count,
    load_multi3drefer,
    target_count_class,
    write_multi3drefer,
)
from datasets.records import EVAL_TYPES, ReferRecord
from datasets.scanrefer import check_records_against_scene


def _m3(ann: int, ids: list[int], eval_type: str, text: str, name: str = "chair", **flags: bool) -> dict:
    rec = {"scene_id": "scene0011_00", "object_name": name, "ann_id": ann, "description": text,
           "object_ids": ids, "eval_type": eval_type}
    rec.update({f: flags.get(f, False) for f in ("spatial", "color", "texture", "shape")})
    return rec


RECORDS = [
    _m3(0, [], "zt_w_d", "the 50cm tall chair by the window", spatial=True),
    _m3(1, [], "zt_wo_d", "a bathtub", name="bathtub"),
    _m3(2, [4], "st_w_d", "a cake stand with 3+ tiers", color=True),
    _m3(3, [19], "st_wo_d", "the microwave\\. near the fridge", name="microwave", shape=True),
    _m3(4, [4, 5, 9], "mt", "the brown  chairs", texture=True),
    _m3(5, [], "zt", "a piano", name="piano"),
    _m3(6, [11, 13], "st_w_d", "the two chairs by the table"),  # inconsistent: st with two targets
]


def _write(tmp_path: Path, records: object, name: str = "multi3drefer_val.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(records) if not isinstance(records, str) else records)
    return path


def test_load_all_eval_types_and_targets(tmp_path: Path) -> None:
    recs = load_multi3drefer(_write(tmp_path, RECORDS))
    assert isinstance(recs, list) and isinstance(recs, Multi3DReferRecords) and len(recs) == 7
    assert [r.eval_type for r in recs] == [r["eval_type"] for r in RECORDS]
    assert {r.eval_type for r in recs} == set(EVAL_TYPES)
    assert [r.object_ids for r in recs] == [(), (), (4,), (19,), (4, 5, 9), (), (11, 13)]
    assert [r.group for r in recs] == [r.eval_type for r in recs]
    assert all(r.source == "multi3drefer" and r.unique is None and r.tokens is None for r in recs)
    assert recs[4].sample_id == "scene0011_00/4"


def test_normaliser_applied_and_counted(tmp_path: Path) -> None:
    recs = load_multi3drefer(_write(tmp_path, RECORDS))
    assert recs[0].description == "the 50 cm tall chair by the window"
    assert recs[2].description == "a cake stand with 3 tiers"
    assert recs[3].description == "the microwave near the fridge"
    assert recs[4].description == "the brown chairs"
    assert [r.raw for r in recs] == [r["description"] for r in RECORDS]
    assert recs.report.normaliser == Counter({"number_unit": 1, "plus_after_number": 1, "backslash": 1,
                                              "whitespace": 1})  # "microwave\\. near" leaves one space
    raw = load_multi3drefer(_write(tmp_path, RECORDS), normalise=False)
    assert [r.description for r in raw] == [r["description"] for r in RECORDS]
    assert not raw.report.normaliser


def test_report_counts_and_inconsistency(tmp_path: Path) -> None:
    report = load_multi3drefer(_write(tmp_path, RECORDS)).report
    assert report.num_records == 7
    assert report.eval_types == Counter({"zt_w_d": 1, "zt_wo_d": 1, "st_w_d": 2, "st_wo_d": 1, "mt": 1, "zt": 1})
    assert report.target_counts == Counter({"0": 3, "1": 2, ">=2": 2})
    assert report.num_inconsistent == 1
    assert "record 6 (scene0011_00/6)" in report.inconsistent[0] and "st_w_d" in report.inconsistent[0]
    assert report.legacy_object_id == 0
    assert "7 records" in report.summary() and "1 with eval_type inconsistent" in report.summary()


@pytest.mark.parametrize(("eval_type", "ids", "ok"), [
    ("zt_w_d", [], True), ("zt_wo_d", [3], False), ("zt", [1, 2], False), ("st_w_d", [], False),
    ("st_wo_d", [1], True), ("mt", [1], False), ("mt", [1, 2], True), ("mt", [], False),
])
def test_consistency_rule(eval_type: str, ids: list[int], ok: bool) -> None:
    assert (target_count_class(len(ids)) == expected_target_count(eval_type)) is ok


def test_round_trip(tmp_path: Path) -> None:
    src = _write(tmp_path, RECORDS)
    recs = load_multi3drefer(src)
    out = tmp_path / "out" / "multi3drefer_val.json"
    write_multi3drefer(recs, out)
    assert json.loads(out.read_text()) == RECORDS
    again = load_multi3drefer(out)
    assert list(again) == list(recs) and again.meta == recs.meta
    assert recs.meta["scene0011_00/0"] == {"spatial": True, "color": False, "texture": False, "shape": False}


def test_round_trip_keeps_extra_and_legacy_fields(tmp_path: Path) -> None:
    extra = [{**RECORDS[2], "object_id": 4, "token": ["a", "cake"], "aabb_3d_min": [[0.0, 1.0, 2.0]]}]
    recs = load_multi3drefer(_write(tmp_path, extra))
    assert recs[0].tokens == ("a", "cake")
    out = tmp_path / "out.json"
    write_multi3drefer(recs, out)
    assert json.loads(out.read_text()) == extra


def test_legacy_object_id_fallback(tmp_path: Path) -> None:
    legacy = {k: v for k, v in RECORDS[3].items() if k != "object_ids"} | {"object_id": "19"}
    recs = load_multi3drefer(_write(tmp_path, [legacy]))
    assert recs[0].object_ids == (19,) and recs.report.legacy_object_id == 1
    out = tmp_path / "out.json"
    write_multi3drefer(recs, out)
    assert json.loads(out.read_text()) == [{**legacy, "object_ids": [19]}]  # gains only the explicit list


def test_write_without_meta_defaults_flags(tmp_path: Path) -> None:
    recs = load_multi3drefer(_write(tmp_path, RECORDS))
    out = tmp_path / "plain.json"
    write_multi3drefer(list(recs), out)  # a plain list carries no meta
    written = json.loads(out.read_text())
    assert all(not any(r[f] for f in ("spatial", "color", "texture", "shape")) for r in written)
    assert [r["description"] for r in written] == [r["description"] for r in RECORDS]  # raw, not normalised
    write_multi3drefer(list(recs), out, meta=recs.meta)
    assert json.loads(out.read_text()) == RECORDS
    with pytest.raises(ValueError, match="eval_type"):
        write_multi3drefer([ReferRecord("s", 0, (1,), "chair", "a chair", "scanrefer")], out)


def _error(tmp_path: Path, records: object) -> DataFormatError:
    path = _write(tmp_path, records)
    with pytest.raises(DataFormatError) as e:
        load_multi3drefer(path)
    assert e.value.path == str(path)
    return e.value


@pytest.mark.parametrize(("change", "field"), [
    ({"eval_type": "zt_maybe"}, "eval_type"), ({"eval_type": None}, "eval_type"),
    ({"object_ids": "4"}, "object_ids"), ({"object_ids": [4, "x"]}, "object_ids"),
    ({"object_ids": [4, 4]}, "object_ids"), ({"object_ids": [-2]}, "object_ids"),
    ({"ann_id": "two"}, "ann_id"), ({"description": " "}, "description"), ({"description": "\\."}, "description"),
    ({"color": "yes"}, "color"), ({"token": [1, 2]}, "token"), ({"object_name": 3}, "object_name"),
    ({"scene_id": None}, "scene_id"),
])
def test_bad_field(tmp_path: Path, change: dict, field: str) -> None:
    err = _error(tmp_path, [RECORDS[0], {**RECORDS[1], "ann_id": 9, **change}])
    assert err.field == field and err.record.startswith("record 1 (")
    if field == "eval_type":
        assert "zt_w_d" in err.problem  # says what was expected


@pytest.mark.parametrize("missing", ["scene_id", "object_name", "ann_id", "description", "eval_type", "object_ids"])
def test_missing_field(tmp_path: Path, missing: str) -> None:
    err = _error(tmp_path, [{k: v for k, v in RECORDS[2].items() if k != missing}])
    assert err.field == missing
    assert err.record == ("record 0" if missing in ("scene_id", "ann_id") else "record 0 (scene0011_00/2)")


def test_duplicate_key_and_malformed_json(tmp_path: Path) -> None:
    err = _error(tmp_path, [RECORDS[0], {**RECORDS[2], "ann_id": 0}])
    assert err.record == "record 1 (scene0011_00/0)" and "first at record 0" in err.problem
    assert "not valid JSON" in _error(tmp_path, "[{").problem
    assert "JSON list" in _error(tmp_path, {"a": 1}).problem


def test_scene_check_names_object_ids(tmp_path: Path) -> None:
    recs = load_multi3drefer(_write(tmp_path, RECORDS))
    instance = np.array([-1, 4, 5, 9, 11, 13, 19, 19])
    assert check_records_against_scene(recs, instance, "scene0011_00") == 7
    with pytest.raises(DataFormatError) as e:
        check_records_against_scene(recs, instance[instance != 9], "scene0011_00")
    assert (e.value.record, e.value.field) == ("record 4 (scene0011_00/4)", "object_ids")
    assert "[9]" in e.value.problem
