"""Label tables of ScanNet v2 (data spec §1.6, §2.1, §5).

- NYU40: the 40 classes of ``scannetv2-labels.combined.tsv`` column ``nyu40class`` (ids 1..40).
- ScanNet-20: the benchmark subset, contiguous ids 0..19; everything else is -100 (ignore).
- ScanRefer-18: the class list of ScanRefer's unique/multiple rule (not the same set as ScanNet-20).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.errors import DataFormatError

NYU40_CLASSES: tuple[str, ...] = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
    "clothes", "ceiling", "books", "refrigerator", "television", "paper", "towel", "shower curtain", "box",
    "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag", "otherstructure",
    "otherfurniture", "otherprop",
)  # NYU40 id = index + 1

SCANNET20_NYU40_IDS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)
SCANNET20_CLASSES: tuple[str, ...] = tuple(NYU40_CLASSES[i - 1] for i in SCANNET20_NYU40_IDS)
IGNORE_LABEL = -100

SCANREFER_CLASSES: tuple[str, ...] = (
    "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter", "desk",
    "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "others",
)
SCANREFER_OTHERS = 17

_NYU40_TO_20 = np.full(256, IGNORE_LABEL, dtype=np.int64)
_NYU40_TO_20[list(SCANNET20_NYU40_IDS)] = np.arange(20)


def nyu40_to_scannet20(nyu40: np.ndarray) -> np.ndarray:
    """Map NYU40 ids (N,) to ScanNet-20 ids 0..19, everything else (0 = unannotated included) to -100."""
    nyu40 = np.asarray(nyu40, dtype=np.int64)
    out = np.full(nyu40.shape, IGNORE_LABEL, dtype=np.int64)
    ok = (nyu40 >= 0) & (nyu40 < len(_NYU40_TO_20))
    out[ok] = _NYU40_TO_20[nyu40[ok]]
    return out


@dataclass(frozen=True)
class LabelRow:
    """One row of ``scannetv2-labels.combined.tsv`` (the columns the toolkit uses)."""

    raw_category: str
    nyu40id: int
    nyu40class: str


TSV_HEADER = ("id", "raw_category", "category", "count", "nyu40id", "eigen13id", "nyuClass", "nyu40class",
              "eigen13class", "ModelNet40", "ModelNet10", "ShapeNetCore55", "synsetoffset", "wnsynsetid",
              "wnsynsetkey", "mpcat40", "mpcat40index")


def read_label_tsv(path: str | Path) -> dict[str, LabelRow]:
    """Read ``scannetv2-labels.combined.tsv`` into ``raw_category -> LabelRow`` (columns 1, 4, 7)."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "label map file is missing (ScanNet ships it as "
                              "scannetv2-labels.combined.tsv beside the scans)")
    rows: dict[str, LabelRow] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)  # split on tabs only, as ScanRefer does
        header = next(reader, None)
        if header is None or len(header) < 8:
            raise DataFormatError(path, "expected a tab-separated header with at least 8 columns", record="line 1")
        for n, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 8:
                raise DataFormatError(path, f"expected >= 8 columns, got {len(row)}", record=f"line {n}")
            try:
                nyu = int(row[4]) if row[4] else 0
            except ValueError as e:
                raise DataFormatError(path, f"not an integer: {row[4]!r}", record=f"line {n}", field="nyu40id") from e
            rows[row[1]] = LabelRow(raw_category=row[1], nyu40id=nyu, nyu40class=row[7])
    return rows


def write_label_tsv(path: str | Path, rows: list[LabelRow]) -> None:
    """Write a label map with ScanNet's 17 columns (unused columns left empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(TSV_HEADER)
        for i, r in enumerate(rows, 1):
            w.writerow([i, r.raw_category, r.raw_category, 0, r.nyu40id, "", r.nyu40class, r.nyu40class]
                       + [""] * 9)


def scanrefer_raw2label(rows: dict[str, LabelRow]) -> dict[str, int]:
    """ScanRefer's ``raw2label``: raw category -> ScanRefer-18 index of its nyu40class, else 17 (others)."""
    index = {name: i for i, name in enumerate(SCANREFER_CLASSES)}
    return {raw: index.get(r.nyu40class, SCANREFER_OTHERS) for raw, r in rows.items()}
