"""COCO segmentation decoding against hand-computed masks, the RLE string code, and named errors."""

from __future__ import annotations

import numpy as np
import pytest

from datasets.coco_masks import check_segmentation, decode_segmentation, encode_mask, rle_string_counts
from datasets.errors import DataFormatError


def rect(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def runs_of(mask: np.ndarray) -> list[int]:
    """Run lengths over the column-major flattened mask, starting with a (possibly empty) run of zeros."""
    flat = mask.flatten(order="F").astype(np.uint8)
    runs, value, n = [], 0, 0
    for v in flat:
        if v == value:
            n += 1
        else:
            runs.append(n)
            value, n = v, 1
    runs.append(n)
    return runs


def test_rectangle_polygon_exact_pixels() -> None:
    m = decode_segmentation([rect(2, 1, 6, 4)], 8, 10)
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:4, 2:6] = True  # integer corners: rows y0..y1-1, columns x0..x1-1
    assert m.dtype == bool and m.shape == (8, 10) and m.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(m, expected)


def test_overlapping_polygons_give_union_not_sum() -> None:
    m = decode_segmentation([rect(2, 1, 6, 4), rect(4, 2, 8, 6)], 8, 10)
    expected = np.zeros((8, 10), dtype=bool)
    expected[1:4, 2:6] = True
    expected[2:6, 4:8] = True
    np.testing.assert_array_equal(m, expected)
    assert m.sum() == 12 + 16 - 4  # |A| + |B| - |A and B|


def test_degenerate_polygons_are_dropped() -> None:
    only = decode_segmentation([[1, 1, 3, 3]], 5, 5)  # two points: pycocotools would read it as a box
    assert only.shape == (5, 5) and not only.any()
    mixed = decode_segmentation([[1, 1, 3, 3], rect(0, 0, 2, 2)], 5, 5)
    assert mixed.sum() == 4 and mixed[:2, :2].all()


def test_uncompressed_rle_hand_case() -> None:
    # 3x4, column-major: 2 zeros, 3 ones, 7 zeros -> column 0 row 2, column 1 rows 0-1.
    m = decode_segmentation({"size": [3, 4], "counts": [2, 3, 7]}, 3, 4)
    expected = np.zeros((3, 4), dtype=bool)
    expected[2, 0] = expected[0, 1] = expected[1, 1] = True
    np.testing.assert_array_equal(m, expected)


def test_compressed_rle_round_trip_str_and_bytes() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((13, 17)) > 0.6
    rle = encode_mask(mask)
    assert rle["size"] == [13, 17] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_segmentation(rle, 13, 17), mask)
    as_bytes = {"size": [13, 17], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(decode_segmentation(as_bytes, 13, 17), mask)
    assert rle_string_counts(rle["counts"]) == runs_of(mask)


def test_rle_string_code_large_runs() -> None:
    mask = np.zeros((300, 200), dtype=bool)
    mask[10:290, 50:150] = True  # long runs need several 5-bit groups and the delta code
    rle = encode_mask(mask)
    assert rle_string_counts(rle["counts"]) == runs_of(mask)
    np.testing.assert_array_equal(decode_segmentation(rle, 300, 200), mask)


BAD = [
    ([], "empty polygon list"),
    ([[0, 0, 4, 0, 4]], "odd number"),
    ([[0, 0, 4, 0, float("nan"), 4]], "finite numbers"),
    ([[0, 0, 4, 0, "4", 4]], "finite numbers"),
    ([5], "flat list"),
    ({"size": [3, 5], "counts": [2, 3, 7]}, "differs from the image size"),
    ({"size": [3, 4], "counts": [2, 3, 8]}, "add up to 13 pixels"),
    ({"size": [3, 4], "counts": [2, -3, 13]}, "non-negative"),
    ({"size": [3, 4], "counts": "2\x7f"}, "malformed"),
    ({"size": [3, 4], "counts": "2P"}, "ends inside a number"),
    ({"size": [3, 4]}, "'counts'"),
    ({"counts": [12]}, "'size'"),
    ("polygon", "expected a list of polygons or an RLE dict"),
]


@pytest.mark.parametrize(("seg", "message"), BAD)
def test_bad_segmentation_names_file_record_field(seg: object, message: str) -> None:
    with pytest.raises(DataFormatError, match=message) as info:
        decode_segmentation(seg, 3, 4, path="x/instances.json", record="annotation 7 (id 70)")
    e = info.value
    assert (e.path, e.record, e.field) == ("x/instances.json", "annotation 7 (id 70)", "segmentation")
    assert "x/instances.json, annotation 7 (id 70), field 'segmentation'" in str(e)


def test_check_accepts_what_decode_accepts() -> None:
    check_segmentation([rect(0, 0, 2, 2)], 3, 4)
    check_segmentation(encode_mask(np.ones((3, 4), dtype=bool)), 3, 4)
    with pytest.raises(ValueError, match="shape"):
        encode_mask(np.ones((2, 3, 4)))
