"""Bad input where 2D data enters: RefCOCO refs pickle + instances.json, the CSV exports, image files.

Same contract as ``test_fuzz_readers.py``: damaged input gives :class:`DataFormatError` naming the file,
the record and the field, or a documented repair; never a crash elsewhere or a silently different sample.
"""

from __future__ import annotations

import csv
import io
import json
import pickle
import struct
import zlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fuzz_helpers import expect_named, workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from datasets.errors import DataFormatError
from datasets.refcoco import load_refer
from datasets.refcoco_csv import load_refcoco_csv
from datasets.refimage import read_rgb

FUZZ = settings(max_examples=30, deadline=timedelta(seconds=3), derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
NON_FINITE = st.sampled_from([float("nan"), float("inf"), float("-inf")])
JUNK = st.one_of(st.none(), st.booleans(), NON_FINITE, st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=3), st.lists(st.integers(0, 9), max_size=2))
NOT_AN_ID = st.one_of(JUNK, st.integers(max_value=-1))




# ------------------------------------------------------------------------------------ RefCOCO (refer)
def coco() -> dict[str, Any]:
    """Two images, three annotations, two categories: the smallest instances.json the reader accepts."""
    square = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]
    return {"images": [{"id": 7, "file_name": "a.jpg", "height": 8, "width": 9},
                       {"id": 8, "file_name": "b.jpg", "height": 6, "width": 6}],
            "annotations": [{"id": 70, "image_id": 7, "category_id": 1, "bbox": [1, 1, 4, 4], "segmentation": [square]},
                            {"id": 71, "image_id": 7, "category_id": 2, "bbox": [0, 0, 2, 3],
                             "segmentation": [[0, 0, 2, 0, 2, 3]]},
                            {"id": 80, "image_id": 8, "category_id": 2, "bbox": [2, 2, 1, 1],
                             "segmentation": [[2, 2, 3, 2, 3, 3]]}],
            "categories": [{"id": 1, "name": "dog"}, {"id": 2, "name": "cup"}]}


def refs() -> list[dict[str, Any]]:
    def sentence(i: int, text: str) -> dict[str, Any]:
        return {"sent_id": i, "sent": text, "raw": text.title(), "tokens": text.split()}
    return [{"ref_id": 1, "ann_id": 70, "image_id": 7, "category_id": 1, "split": "val",
             "sentences": [sentence(10, "dog on left"), sentence(11, "brown dog")]},
            {"ref_id": 2, "ann_id": 71, "image_id": 7, "category_id": 2, "split": "val",
             "sentences": [sentence(20, "cup")]},
            {"ref_id": 3, "ann_id": 80, "image_id": 8, "category_id": 2, "split": "testA",
             "sentences": [sentence(30, "small cup")]}]


def write_refer(root: Path, refs_data: Any, inst: Any) -> tuple[Path, Path]:
    folder = root / "refcoco"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs_data, protocol=2))
    (folder / "instances.json").write_text(json.dumps(inst))
    return folder / "refs(unc).p", folder / "instances.json"


def test_layout_is_valid() -> None:
    """The fixture the fuzz tests damage loads as 4 sentences (else every test below would be vacuous)."""
    with workdir() as d:
        write_refer(d, refs(), coco())
        assert [r.sent_id for r in load_refer(d, "refcoco")] == [10, 11, 20, 30]


@FUZZ
@given(which=st.sampled_from(["refs", "instances"]), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_refer_files(which: str, cut: float) -> None:
    """A truncated pickle or instances.json is named (the pickle is read with a data-only unpickler)."""
    with workdir() as d:
        paths = dict(zip(("refs", "instances"), write_refer(d, refs(), coco())))
        blob = paths[which].read_bytes()
        paths[which].write_bytes(blob[: int(cut * len(blob))])
        expect_named(lambda: load_refer(d, "refcoco"), paths[which])


REF_BAD = {"ref_id": NOT_AN_ID, "ann_id": NOT_AN_ID, "image_id": NOT_AN_ID, "category_id": NOT_AN_ID,
           "split": st.one_of(st.none(), st.integers(), st.sampled_from(["", "  "])),
           "sentences": st.one_of(st.none(), st.integers(), st.text(max_size=3), st.just([]),
                                  st.lists(st.one_of(st.none(), st.integers(), st.text(max_size=2)), min_size=1,
                                           max_size=2))}
SENT_BAD = {"sent_id": NOT_AN_ID,
            "sent": st.one_of(st.none(), st.integers(), NON_FINITE, st.lists(st.text(max_size=2))),
            "raw": st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=2))),
            "tokens": st.one_of(st.none(), st.integers(), st.text(max_size=3),
                                st.lists(st.one_of(st.none(), st.integers()), min_size=1, max_size=2))}


@FUZZ
@given(data=st.data(), mode=st.sampled_from(["value", "missing"]))
def test_bad_ref_field(data: st.DataObject, mode: str) -> None:
    """A ref (or one of its sentences) with a wrong-typed or missing field names ``ref k`` and the field."""
    k = data.draw(st.integers(0, 2), label="ref")
    table = data.draw(st.sampled_from(["ref", "sentence"]), label="where")
    field = data.draw(st.sampled_from(sorted(REF_BAD if table == "ref" else SENT_BAD)), label="field")
    bad = refs()
    target = bad[k] if table == "ref" else bad[k]["sentences"][0]
    if mode == "value":
        target[field] = data.draw((REF_BAD if table == "ref" else SENT_BAD)[field], label="value")
    else:
        del target[field]
    with workdir() as d:
        refs_path, _ = write_refer(d, bad, coco())
        err = expect_named(lambda: load_refer(d, "refcoco"), refs_path, record=f"ref {k}")
        want = field if table == "ref" else f"sentences[0].{field}"
        # A bad sentences list is reported on the list or on its first entry.
        assert err.field is not None and err.field.startswith(want), str(err)


@FUZZ
@given(k=st.integers(0, 2), value=st.one_of(
    NON_FINITE.map(lambda v: [v, 1, 2, 2]), NON_FINITE.map(lambda v: [1, 1, v, 2]),
    st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=6).filter(lambda b: len(b) != 4),
    st.tuples(st.just(1), st.just(1), st.floats(max_value=-1e-3, allow_infinity=False), st.just(2)).map(list),
    JUNK))
def test_non_finite_or_malformed_box(k: int, value: Any) -> None:
    """NaN / inf / negative-size / wrong-length bbox in instances.json names the annotation and ``bbox``."""
    inst = coco()
    inst["annotations"][k]["bbox"] = value
    with workdir() as d:
        _, inst_path = write_refer(d, refs(), inst)
        expect_named(lambda: load_refer(d, "refcoco"), inst_path, record=f"annotation {k}", field="bbox")


@FUZZ
@given(k=st.integers(0, 2), value=st.one_of(
    st.lists(st.lists(NON_FINITE, min_size=6, max_size=6), min_size=1, max_size=2), st.just([]),
    st.lists(st.lists(st.integers(0, 5), min_size=1, max_size=5).filter(lambda p: len(p) % 2), min_size=1,
             max_size=2),
    st.none(), st.integers(), st.text(max_size=3)))
def test_non_finite_or_malformed_polygon(k: int, value: Any) -> None:
    """NaN / inf polygon coordinates, odd-length or empty polygons: named, not decoded into a wrong mask."""
    inst = coco()
    inst["annotations"][k]["segmentation"] = value
    with workdir() as d:
        _, inst_path = write_refer(d, refs(), inst)
        expect_named(lambda: load_refer(d, "refcoco"), inst_path, record=f"annotation {k}", field="segmentation")


@FUZZ
@given(k=st.integers(0, 2), field=st.sampled_from(["ann_id", "image_id", "category_id"]),
       value=st.integers(1000, 10**12))
def test_unknown_ids(k: int, field: str, value: int) -> None:
    """An ann_id, image_id or category_id that instances.json lacks (or contradicts) is named on the ref."""
    bad = refs()
    bad[k][field] = value
    with workdir() as d:
        refs_path, _ = write_refer(d, bad, coco())
        expect_named(lambda: load_refer(d, "refcoco"), refs_path, record=f"ref {k}", field=field)


@FUZZ
@given(section=st.sampled_from(["images", "annotations", "categories"]), data=st.data())
def test_bad_instances_records(section: str, data: st.DataObject) -> None:
    """Images / annotations / categories with a missing or wrong-typed id, size or name are named."""
    inst = coco()
    field = data.draw(st.sampled_from({"images": ["id", "file_name", "height", "width"], "annotations": ["id"],
                                       "categories": ["id", "name"]}[section]), label="field")
    k = data.draw(st.integers(0, len(inst[section]) - 1), label="index")
    if data.draw(st.booleans(), label="delete"):
        del inst[section][k][field]
    else:
        text_bad = st.one_of(st.none(), st.sampled_from(["", " "]), st.integers())
        size_bad = st.one_of(NOT_AN_ID, st.just(0))  # sizes must be positive
        inst[section][k][field] = data.draw(text_bad if field in ("file_name", "name") else
                                            size_bad if field in ("height", "width") else NOT_AN_ID, label="value")
    record = {"images": "image", "annotations": "annotation", "categories": "category"}[section]
    with workdir() as d:
        _, inst_path = write_refer(d, refs(), inst)
        expect_named(lambda: load_refer(d, "refcoco"), inst_path, record=f"{record} {k}", field=field)


# ----------------------------------------------------------------------------------------- CSV exports
def csv_rows() -> list[list[str]]:
    return [["uid", "ref_id", "img_id", "sent_id", "sent", "bbox"],
            ["u1", "1", "7", "10", "dog on left", "[1.0, 1.0, 4.0, 4.0]"],
            ["u2", "1", "7", "11", "brown dog, big", "[1.0, 1.0, 4.0, 4.0]"],
            ["u3", "2", "7", "20", "the \"cup\"", "[0, 0, 2.5, 3]"]]


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


@FUZZ
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_csv_gives_error_or_a_correct_prefix(cut: float) -> None:
    """A CSV cut anywhere: a named error, or the rows before the cut exactly as written (never a wrong row).

    A cut at a line end is indistinguishable from a shorter file; the sentence counts of ``refcoco_check``
    are what catch that, not the reader.
    """
    with workdir() as d:
        path = write_csv(d / "refcoco_unc_val.csv", csv_rows())
        full = load_refcoco_csv(path)
        blob = path.read_bytes()
        path.write_bytes(blob[: int(cut * len(blob))])
        try:
            got = load_refcoco_csv(path)
        except DataFormatError as e:
            assert Path(e.path) == path
            return
        assert got == full[: len(got)]


@FUZZ
@given(row=st.integers(1, 3), col=st.sampled_from(["ref_id", "img_id", "sent_id", "sent", "bbox"]), data=st.data())
def test_bad_csv_cell(row: int, col: str, data: st.DataObject) -> None:
    """A bad id (incl. non-ASCII digits), an empty sentence or a NaN / malformed box names line and column."""
    strategy = {"sent": st.sampled_from(["", "   ", "\t"]),
                "bbox": st.one_of(NON_FINITE.map(lambda v: f"[{v}, 1, 2, 3]"), st.sampled_from(
                    ["", "[1, 2, 3]", "[1, 2, -3, 4]", "1 2 3 4", "[1, 2, 3, 4", "null", "[true, 1, 2, 3]"]))}.get(
        col, st.sampled_from(["", "-1", "1.5", "x", "\u0661", "²", " 3", "NaN"]))
    rows = csv_rows()
    rows[row][rows[0].index(col)] = data.draw(strategy, label="value")
    with workdir() as d:
        path = write_csv(d / "refcoco_unc_val.csv", rows)
        expect_named(lambda: load_refcoco_csv(path), path, record=f"line {row + 1}", field=col)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FUZZ
@given(blob=st.one_of(st.binary(min_size=1, max_size=40).filter(lambda b: not _is_utf8(b)),
                      st.sampled_from([b"\xff\xfeuid,ref_id\n", b"uid,ref_id,img_id,sent_id,sent,bbox\n\xff\n"])))
def test_csv_not_utf8(blob: bytes) -> None:
    """Bytes that are not UTF-8 text are named (they used to escape as UnicodeDecodeError)."""
    with workdir() as d:
        path = d / "refcoco_unc_val.csv"
        path.write_bytes(blob)
        expect_named(lambda: load_refcoco_csv(path), path)


def test_csv_enormous_sentence_is_named() -> None:
    """A field over the csv module's size limit is a named error, not a bare ``_csv.Error``."""
    with workdir() as d:
        rows = csv_rows()
        rows[2][4] = "dog " * (csv.field_size_limit() // 4 + 10)
        path = write_csv(d / "refcoco_unc_val.csv", rows)
        expect_named(lambda: load_refcoco_csv(path), path)


# --------------------------------------------------------------------------------------------- images
def encoded(fmt: str, h: int, w: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


@FUZZ
@given(fmt=st.sampled_from(["JPEG", "PNG"]), h=st.integers(1, 40), w=st.integers(1, 40), seed=st.integers(0, 9),
       cut=st.floats(0, 1, exclude_max=True))
def test_truncated_image_gives_error_or_the_same_pixels(fmt: str, h: int, w: int, seed: int, cut: float) -> None:
    """A truncated JPEG/PNG: a named error, or (when only trailing markers were cut) exactly the full image."""
    blob = encoded(fmt, h, w, seed)
    with workdir() as d:
        full_path, cut_path = d / "full.img", d / "cut.img"
        full_path.write_bytes(blob)
        cut_path.write_bytes(blob[: int(cut * len(blob))])
        full = read_rgb(full_path)
        try:
            got = read_rgb(cut_path)
        except DataFormatError as e:
            assert Path(e.path) == cut_path
            return
        assert torch.equal(got, full)


@FUZZ
@given(blob=st.binary(max_size=200))
def test_random_bytes_are_not_an_image(blob: bytes) -> None:
    """Arbitrary bytes (empty included) are a named error."""
    with workdir() as d:
        path = d / "x.jpg"
        path.write_bytes(blob)
        expect_named(lambda: read_rgb(path), path)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG claiming ``width`` x ``height`` RGB pixels: IHDR, a few bytes of IDAT, IEND.

    PIL only checks the size once it has reached image data, so the IDAT chunk must be there.
    """
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


@FUZZ
@given(side=st.integers(20_000, 60_000))
def test_decompression_bomb_is_named(side: int) -> None:
    """A header claiming gigapixels is refused by PIL; the refusal names the file (it is not an OSError)."""
    with workdir() as d:
        path = d / "bomb.png"
        path.write_bytes(png_header(side, side))
        err = expect_named(lambda: read_rgb(path), path)
        assert "decompression bomb" in err.problem.lower(), err.problem


def test_missing_image_and_folder_are_named() -> None:
    with workdir() as d:
        expect_named(lambda: read_rgb(d / "nope.jpg"), d / "nope.jpg")
        expect_named(lambda: read_rgb(d), d)
