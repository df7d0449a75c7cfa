"""Bad input where 3D data enters: ScanRefer, Multi3DRefer, prepared scenes and the raw ScanNet files.

Property-based (hypothesis): each test damages a valid file in a generated way (truncation, a wrong type,
a missing key, NaN / infinite numbers, an empty scene, empty or enormous text, an unknown scene id) and
checks that the reader either raises :class:`DataFormatError` naming the file, the record and the field,
or applies its documented repair. A hang, a numpy/torch exception or a silently different sample fails.

Every test is bounded (few examples, a deadline, derandomized) so the file stays well under a minute.
The 2D readers (RefCOCO, CSV exports, images) are in ``test_fuzz_readers_2d.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzz_helpers import expect_named, workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasets.errors import DataFormatError
from datasets.multi3drefer import load_multi3drefer
from datasets.records import EVAL_TYPES, ReferRecord
from datasets.refer3d import Refer3DDataset
from datasets.scannet import (
    Mesh,
    PreparedScene,
    SegGroup,
    fast_read_labels,
    fast_read_mesh,
    read_aggregation,
    read_labels,
    read_mesh,
    read_segs,
    write_aggregation,
    write_labels,
    write_mesh,
    write_segs,
)
from datasets.scanrefer import load_scanrefer

# Small and deterministic: these run on every commit, so a failure must reproduce and the file must be fast.
FUZZ = settings(max_examples=30, deadline=timedelta(seconds=3), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# Values of the wrong JSON type for any field: each reader must refuse them by name, not coerce them.
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
JUNK = st.one_of(st.none(), st.booleans(), NON_FINITE, st.floats(allow_nan=False, allow_infinity=False),
                 st.lists(st.integers(0, 9), max_size=3),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
NOT_AN_ID = st.one_of(JUNK, st.integers(max_value=-1), st.sampled_from(["", "x", "1.5", "-3", " 7", "\u0661", "²"]))
NOT_A_NAME = st.one_of(JUNK, st.integers(), st.sampled_from(["", "   ", "\t\n"]))
NOT_A_TEXT = st.one_of(JUNK, st.integers(), st.sampled_from(["", "   ", "...", "?!", "\n\t"]))
NOT_TOKENS = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just([]),
                       st.lists(st.one_of(st.integers(), st.none(), st.lists(st.text(max_size=2))), min_size=1,
                                max_size=3))




def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))  # json.dumps writes NaN / Infinity, as a careless exporter would
    return path


# ------------------------------------------------------------------------------- ScanRefer / Multi3DRefer
def scanrefer_record(i: int) -> dict[str, Any]:
    return {"scene_id": "scene0000_00", "object_id": str(i), "object_name": "chair", "ann_id": "0",
            "description": f"the chair number {i} near the table .", "token": ["the", "chair", str(i)]}


def multi3drefer_record(i: int) -> dict[str, Any]:
    return {"scene_id": "scene0000_00", "object_name": "chair", "ann_id": i, "description": f"chair {i} by the door",
            "object_ids": [i, i + 1], "eval_type": "mt", "spatial": True, "color": False, "texture": False,
            "shape": False}


SCANREFER_BAD = {"scene_id": NOT_A_NAME, "object_id": NOT_AN_ID, "ann_id": NOT_AN_ID, "object_name": NOT_A_NAME,
                 "description": NOT_A_TEXT, "token": NOT_TOKENS}
MULTI3DREFER_BAD = {
    "scene_id": NOT_A_NAME, "ann_id": NOT_AN_ID, "description": NOT_A_TEXT, "token": NOT_TOKENS,
    "object_name": st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=2), max_size=2)),
    "eval_type": st.one_of(JUNK, st.text(max_size=6).filter(lambda s: s not in EVAL_TYPES)),
    "object_ids": st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(NOT_AN_ID, min_size=1, max_size=3),
                            st.just([4, 4])),
    "spatial": st.one_of(st.none(), st.integers(), NON_FINITE, st.text(max_size=3)),
}


@FUZZ
@given(n=st.integers(1, 4), cut=st.floats(0, 1, exclude_max=True))
@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_truncated_annotation_file(loader: Callable[[Path], Any], n: int, cut: float) -> None:
    """Any strict prefix of a JSON list is invalid JSON: the file is named, nothing is half-loaded."""
    make = scanrefer_record if loader is load_scanrefer else multi3drefer_record
    with workdir() as d:
        data = json.dumps([make(i) for i in range(n)]).encode()
        path = d / "ann.json"
        path.write_bytes(data[: int(cut * len(data))])
        expect_named(lambda: loader(path), path)


@FUZZ
@given(data=st.data(), n=st.integers(1, 4))
@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_wrong_type_names_record_and_field(loader: Callable[[Path], Any], data: st.DataObject, n: int) -> None:
    """A wrong-typed value in record k is reported as ``record k`` and that field, never coerced."""
    scanrefer = loader is load_scanrefer
    bad = SCANREFER_BAD if scanrefer else MULTI3DREFER_BAD
    field = data.draw(st.sampled_from(sorted(bad)), label="field")
    value = data.draw(bad[field], label="value")
    k = data.draw(st.integers(0, n - 1), label="record")
    records = [(scanrefer_record if scanrefer else multi3drefer_record)(i) for i in range(n)]
    records[k][field] = value
    with workdir() as d:
        path = write_json(d / "ann.json", records)
        expect_named(lambda: loader(path), path, record=f"record {k}", field=field)


@FUZZ
@given(data=st.data(), n=st.integers(1, 4))
@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_missing_key(loader: Callable[[Path], Any], data: st.DataObject, n: int) -> None:
    """A missing required key is named; a missing optional ``token`` is the documented repair (None)."""
    scanrefer = loader is load_scanrefer
    records = [(scanrefer_record if scanrefer else multi3drefer_record)(i) for i in range(n)]
    k = data.draw(st.integers(0, n - 1), label="record")
    key = data.draw(st.sampled_from(sorted(records[k])), label="key")
    del records[k][key]
    with workdir() as d:
        path = write_json(d / "ann.json", records)
        if key == "token":  # documented: optional, the record then has no tokens
            assert loader(path)[k].tokens is None
        elif key in ("spatial", "color", "texture", "shape"):  # documented: optional metadata (False on write)
            assert len(loader(path)) == n
        else:  # Multi3DRefer object_ids too: there is no legacy object_id to fall back to
            expect_named(lambda: loader(path), path, record=f"record {k}", field=key)


@FUZZ
@given(top=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                                   max_size=2)),
       item=st.one_of(st.none(), st.integers(), st.text(max_size=5), st.lists(st.integers(), max_size=2)))
@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_wrong_shape_of_file(loader: Callable[[Path], Any], top: Any, item: Any) -> None:
    """Not a list at the top, or a record that is not an object: named, with the record index."""
    with workdir() as d:
        path = write_json(d / "ann.json", top)
        expect_named(lambda: loader(path), path)
        path = write_json(d / "ann.json", [item])
        expect_named(lambda: loader(path), path, record="record 0")


@FUZZ
@given(text=st.text(max_size=60))
@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_any_description_is_kept_or_refused(loader: Callable[[Path], Any], text: str) -> None:
    """Any string: refused by name (no words, before or after normalisation) or kept verbatim in ``raw``."""
    rec = (scanrefer_record if loader is load_scanrefer else multi3drefer_record)(0)
    rec["description"] = text
    with workdir() as d:
        path = write_json(d / "ann.json", [rec])
        try:
            loaded = loader(path)
        except DataFormatError as e:
            assert (Path(e.path), e.field) == (path, "description") and e.record.startswith("record 0"), str(e)
            return
        assert loaded[0].raw == text and any(c.isalnum() or c == "_" for c in loaded[0].description)


@settings(FUZZ, max_examples=4)  # each example is megabytes of text
@given(words=st.lists(st.sampled_from(["chair", "50cm", "3+", "table\\.", "  ", "left"]), min_size=1, max_size=6),
       repeat=st.integers(10_000, 40_000))
def test_enormous_description_loads_in_time(words: list[str], repeat: int) -> None:
    """Megabyte-long descriptions go through the normaliser in linear time and are kept whole in ``raw``."""
    text = " ".join(words) * repeat + " chair"
    rec = scanrefer_record(0)
    rec["description"] = text
    with workdir() as d:
        loaded = load_scanrefer(write_json(d / "ann.json", [rec]))
    assert loaded[0].raw == text and "chair" in loaded[0].description


def test_empty_annotation_file_is_empty() -> None:
    """Documented: ``[]`` loads as no records (the dataset built on it has no items)."""
    with workdir() as d:
        assert load_scanrefer(write_json(d / "a.json", [])) == []
        assert list(load_multi3drefer(write_json(d / "b.json", []))) == []


# ------------------------------------------------------------------------------------- prepared scenes
def save_scene(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    scene = PreparedScene("scene0000_00", rng.normal(size=(n, 3)).astype(np.float32),
                          rng.integers(0, 256, (n, 3)).astype(np.uint8), np.arange(n) % 3,
                          rng.integers(0, 20, n), np.where(np.arange(n) < n // 2, 4, -1))
    return scene.save(root)


ARRAY_NAMES = ("coord", "color", "superpoint", "semantic", "instance")


@FUZZ
@given(name=st.sampled_from(ARRAY_NAMES), cut=st.floats(0, 1, exclude_max=True), n=st.integers(1, 40))
def test_truncated_npy_names_the_file(name: str, cut: float, n: int) -> None:
    """A partly written ``.npy`` (header or data cut anywhere) is named, not loaded short or padded."""
    with workdir() as d:
        folder = save_scene(d, n)
        path = folder / f"{name}.npy"
        blob = path.read_bytes()
        path.write_bytes(blob[: int(cut * len(blob))])
        expect_named(lambda: PreparedScene.load(folder), path)


@FUZZ
@given(n=st.integers(1, 30), data=st.data())
def test_non_finite_coordinates_name_the_first_point(n: int, data: st.DataObject) -> None:
    """NaN / inf anywhere in ``coord`` is refused with the first bad point, not voxelised into garbage."""
    bad = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 2), NON_FINITE), min_size=1, max_size=4))
    with workdir() as d:
        folder = save_scene(d, n)
        coord = np.load(folder / "coord.npy")
        for row, col, value in bad:
            coord[row, col] = value
        np.save(folder / "coord.npy", coord)
        first = min(row for row, _, _ in bad)
        expect_named(lambda: PreparedScene.load(folder), folder / "coord.npy", record=f"point {first}",
                     field="coord")


WRONG_ARRAYS: dict[str, Callable[[int], np.ndarray]] = {
    "coord": lambda n: np.zeros((n, 3), np.float64),
    "color": lambda n: np.zeros((n, 3), np.float32),
    "superpoint": lambda n: np.zeros(n, np.int32),
    "semantic": lambda n: np.zeros((n, 1), np.int64),
    "instance": lambda n: np.zeros(n, np.float32),
}


@FUZZ
@given(name=st.sampled_from(ARRAY_NAMES), n=st.integers(1, 20), kind=st.sampled_from(["dtype", "rows", "width"]))
def test_wrong_array_dtype_rows_or_width(name: str, n: int, kind: str) -> None:
    """Wrong dtype, a row count other than coord's, or an (N, k != 3) coord/colour: the file is named."""
    with workdir() as d:
        folder = save_scene(d, n)
        if kind == "dtype":
            arr = WRONG_ARRAYS[name](n)
        else:
            arr = np.load(folder / f"{name}.npy")
            if kind == "rows":
                arr = np.concatenate([arr, arr[:1]])
            elif arr.ndim == 2:
                arr = np.concatenate([arr, arr[:, :1]], 1)  # (N, 4)
            else:
                arr = arr[:, None]  # (N, 1): wrong ndim
        np.save(folder / f"{name}.npy", arr)
        # Rows are compared with coord's count, so an extra coord row is reported on the first other array.
        named = "color" if (kind == "rows" and name == "coord") else name
        expect_named(lambda: PreparedScene.load(folder), folder / f"{named}.npy")


def test_empty_scene_is_refused() -> None:
    """A scene with zero points is refused at load (voxelisation and pooling are undefined on it)."""
    with workdir() as d:
        folder = save_scene(d, 3)
        for name in ARRAY_NAMES:
            arr = np.load(folder / f"{name}.npy")
            np.save(folder / f"{name}.npy", arr[:0])
        expect_named(lambda: PreparedScene.load(folder), folder / "coord.npy")


@FUZZ
@given(name=st.sampled_from(["superpoint", "instance"]), n=st.integers(1, 20), data=st.data())
def test_negative_ids_are_refused(name: str, n: int, data: st.DataObject) -> None:
    """A superpoint id < 0 (np.bincount would crash) or an instance id < -1 is named with its point."""
    value = data.draw(st.integers(-1000, -1 if name == "superpoint" else -2), label="value")
    at = data.draw(st.integers(0, n - 1), label="point")
    with workdir() as d:
        folder = save_scene(d, n)
        arr = np.load(folder / f"{name}.npy")
        arr[at] = value
        np.save(folder / f"{name}.npy", arr)
        expect_named(lambda: PreparedScene.load(folder), folder / f"{name}.npy", record=f"point {at}", field=name)


@FUZZ
@given(content=st.one_of(st.binary(max_size=20), st.sampled_from([b"[]", b"1", b'"x"', b"null", b'{"scene_id": ',
                                                                  b"\xff\xfe{}"])))
def test_bad_meta_json(content: bytes) -> None:
    """meta.json that is not a JSON object (truncated, binary, a list) is named; nothing crashes later."""
    with workdir() as d:
        folder = save_scene(d)
        (folder / "meta.json").write_bytes(content)
        try:  # the oracle decodes as the reader does: UTF-8 only (json.loads(bytes) would also try UTF-16/32)
            is_object = isinstance(json.loads(content.decode("utf-8")), dict)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            is_object = False
        if is_object:  # a random but valid object: the scene loads, its folder name is the fallback id
            assert PreparedScene.load(folder).num_points == 6
        else:
            expect_named(lambda: PreparedScene.load(folder), folder / "meta.json")


@FUZZ
@given(scene=st.from_regex(r"scene0[0-9]{3}_0[0-9]", fullmatch=True).filter(lambda s: s != "scene0000_00"),
       ann=st.integers(0, 50))
def test_unknown_scene_id_is_named_at_construction(scene: str, ann: int) -> None:
    """A record whose scene has no prepared folder fails when the dataset is built, naming the record."""
    rec = ReferRecord(scene_id=scene, ann_id=ann, object_ids=(4,), object_name="chair", description="a chair",
                      source="scanrefer")
    with workdir() as d:
        save_scene(d)
        err = expect_named(lambda: Refer3DDataset(d, [rec], lambda s, r: {}, max_descriptions=4), d / scene,
                           field="scene_id")
        assert err.record == rec.sample_id


@FUZZ
@given(obj=st.one_of(st.integers(-5, -1), st.integers(5, 10_000)))
def test_unknown_object_id_is_named_when_loaded(obj: int) -> None:
    """An object id the scene's instance labels lack is named when its item is loaded, never masked empty."""
    rec = ReferRecord(scene_id="scene0000_00", ann_id=0, object_ids=(obj,), object_name="chair",
                      description="a chair", source="scanrefer")
    with workdir() as d:
        folder = save_scene(d)
        ds = Refer3DDataset(d, [rec], lambda s, r: {}, max_descriptions=4)
        expect_named(lambda: ds[0], folder / "instance.npy", record=rec.sample_id, field="object_ids")


# ------------------------------------------------------------------------------------ raw ScanNet files
def write_scan(d: Path, n: int = 12, f: int = 10, seed: int = 0) -> tuple[Path, Path, Path, Path, Mesh]:
    rng = np.random.default_rng(seed)
    mesh = Mesh(xyz=rng.normal(size=(n, 3)).astype(np.float32), rgb=rng.integers(0, 256, (n, 3)).astype(np.uint8),
                faces=rng.integers(0, n, (f, 3)).astype(np.int64))
    paths = d / "m.ply", d / "l.ply", d / "s.json", d / "a.json"
    write_mesh(paths[0], mesh)
    write_labels(paths[1], mesh, rng.integers(0, 41, n))
    write_segs(paths[2], "scene0000_00", rng.choice([3, 8, 12], n))
    write_aggregation(paths[3], "scene0000_00", [SegGroup(1, 1, "chair", [3]), SegGroup(2, 2, "table", [8, 12])])
    return (*paths, mesh)


@FUZZ
@given(which=st.sampled_from(["mesh", "labels"]), fast=st.booleans(), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_ply(which: str, fast: bool, cut: float) -> None:
    """A PLY cut anywhere (header, vertices, faces) is named by both the reference and the fast reader."""
    with workdir() as d:
        mesh_path, labels_path, *_ = write_scan(d)
        path = mesh_path if which == "mesh" else labels_path
        blob = path.read_bytes()
        path.write_bytes(blob[: int(cut * len(blob))])
        reader = {("mesh", False): read_mesh, ("mesh", True): fast_read_mesh,
                  ("labels", False): read_labels, ("labels", True): fast_read_labels}[which, fast]
        expect_named(lambda: reader(path), path)


@FUZZ
@given(fast=st.booleans(), data=st.data())
def test_non_finite_ply_vertex(fast: bool, data: st.DataObject) -> None:
    """NaN / inf vertex coordinates are refused with the first bad vertex (both readers)."""
    bad = data.draw(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 2), NON_FINITE), min_size=1, max_size=3))
    with workdir() as d:
        mesh_path, *_, mesh = write_scan(d)
        for row, col, value in bad:
            mesh.xyz[row, col] = value
        write_mesh(mesh_path, mesh)
        first = min(row for row, _, _ in bad)
        expect_named(lambda: (fast_read_mesh if fast else read_mesh)(mesh_path), mesh_path, record=f"vertex {first}",
                     field="x/y/z")


@FUZZ
@given(value=st.one_of(JUNK.filter(lambda v: not isinstance(v, list)), st.text(max_size=4),
                       st.lists(st.one_of(st.none(), st.booleans(), st.floats(), st.text(max_size=2),
                                          st.lists(st.integers(), max_size=2)), min_size=1, max_size=4)),
       cut=st.floats(0, 1, exclude_max=True), mode=st.sampled_from(["value", "missing", "truncate"]))
def test_bad_segs_json(value: Any, cut: float, mode: str) -> None:
    """segIndices of the wrong type, missing, or a truncated file: named with field segIndices / the file."""
    with workdir() as d:
        _, _, segs_path, _, _ = write_scan(d)
        obj = json.loads(segs_path.read_text())
        if mode == "value":
            obj["segIndices"] = value
        elif mode == "missing":
            del obj["segIndices"]
        blob = json.dumps(obj).encode()
        segs_path.write_bytes(blob[: int(cut * len(blob))] if mode == "truncate" else blob)
        expect_named(lambda: read_segs(segs_path), segs_path, field=None if mode == "truncate" else "segIndices")


AGG_BAD = {"id": NOT_AN_ID.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool))),
           "objectId": NOT_AN_ID.filter(lambda v: not (isinstance(v, int) and not isinstance(v, bool))),
           "label": st.one_of(st.none(), st.integers(), NON_FINITE, st.lists(st.text(max_size=2), max_size=2)),
           "segments": st.one_of(st.none(), st.integers(), st.text(min_size=1, max_size=4), st.dictionaries(
               st.text(max_size=2), st.integers(), min_size=1, max_size=2),
               st.lists(st.one_of(NON_FINITE, st.booleans(), st.text(max_size=2), st.none()), min_size=1, max_size=3))}


@FUZZ
@given(data=st.data(), mode=st.sampled_from(["value", "missing"]))
def test_bad_aggregation_group(data: st.DataObject, mode: str) -> None:
    """A segGroup field of the wrong type (never int()-coerced: "123" is not segments [1, 2, 3]) or missing."""
    k = data.draw(st.integers(0, 1), label="group")
    field = data.draw(st.sampled_from(sorted(AGG_BAD) if mode == "value" else ["id", "label", "segments"]))
    with workdir() as d:
        *_, agg_path, _ = write_scan(d)
        obj = json.loads(agg_path.read_text())
        if mode == "value":
            obj["segGroups"][k][field] = data.draw(AGG_BAD[field], label="value")
        else:
            del obj["segGroups"][k][field]
        write_json(agg_path, obj)
        err = expect_named(lambda: read_aggregation(agg_path), agg_path, record=f"segGroups[{k}]")
        assert err.field is not None and err.field.startswith(field), str(err)


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True),
       groups=st.one_of(st.none(), st.integers(), st.text(max_size=3), st.lists(st.integers(), min_size=1, max_size=2)))
def test_truncated_or_malformed_aggregation(cut: float, groups: Any) -> None:
    """A truncated aggregation file, or segGroups that is not a list of objects: named."""
    with workdir() as d:
        *_, agg_path, _ = write_scan(d)
        blob = agg_path.read_bytes()
        agg_path.write_bytes(blob[: int(cut * len(blob))])
        expect_named(lambda: read_aggregation(agg_path), agg_path)
        write_json(agg_path, {"segGroups": groups})
        expect_named(lambda: read_aggregation(agg_path), agg_path)


@pytest.mark.parametrize("loader", [load_scanrefer, load_multi3drefer])
def test_empty_token_list_is_refused(loader: Callable[[Path], Any]) -> None:
    """``token: []`` would give RG-SAN an empty text (it reads tokens, not the description): refused."""
    rec = (scanrefer_record if loader is load_scanrefer else multi3drefer_record)(0)
    rec["token"] = []
    with workdir() as d:
        path = write_json(d / "ann.json", [rec])
        expect_named(lambda: loader(path), path, record="record 0", field="token")
