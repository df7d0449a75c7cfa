"""The CSV exports of the RefCOCO family (``<dataset>_<split_by>_<split>.csv``; boxes only, no masks).

Columns ``uid,ref_id,img_id,sent_id,sent,bbox``; ``bbox`` is the ref's COCO box ``[x, y, w, h]`` (refcoco spec §1,
``../shared/realdata/refcoco_csv``). One ``RefBox`` per sentence.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from datasets.errors import DataFormatError
from datasets.refcoco import COCO_TRAIN2014_NAME, _box

CSV_COLUMNS = ("uid", "ref_id", "img_id", "sent_id", "sent", "bbox")


@dataclass(frozen=True)
class RefBox:
    """One sentence of a CSV export: the ref's COCO box (x, y, w, h float pixels), no mask, no category."""

    dataset: str
    split_by: str
    split: str
    uid: str
    ref_id: int
    image_id: int
    sent_id: int
    sentence: str
    box: tuple[float, float, float, float]

    @property
    def sample_id(self) -> str:
        return f"{self.dataset}/{self.sent_id}"

    @property
    def image_file_name(self) -> str:
        """All three datasets use COCO train2014 images (§1.1)."""
        return COCO_TRAIN2014_NAME.format(self.image_id)


def load_refcoco_csv(path: str | Path) -> list[RefBox]:
    """Read one CSV export; dataset, partition and split come from the file name (``refcoco+_unc_testA.csv``).

    ``bbox`` is written as a JSON list (``"[3.24, 159.31, 156.4, 312.81]"``).

    Raises:
        DataFormatError: naming the file, the row (line and uid) and the column: a non-ASCII-digit id, an
            empty sentence, a malformed or non-finite box; or the file for non-UTF-8 bytes or a CSV error.
            A file cut at a line end reads as a shorter file (the counts of ``refcoco_check`` catch that).
    """
    path = Path(path)
    parts = path.stem.rsplit("_", 2)
    if len(parts) != 3 or not all(parts):
        raise DataFormatError(path, "file name must be <dataset>_<split_by>_<split>.csv")
    dataset, split_by, split = parts
    if not path.is_file():
        raise DataFormatError(path, "CSV file is missing")
    try:
        return _read_rows(path, dataset, split_by, split)
    except UnicodeDecodeError as e:
        raise DataFormatError(path, f"not UTF-8 text ({e})") from e
    except csv.Error as e:  # e.g. a field over csv.field_size_limit (an enormous sentence)
        raise DataFormatError(path, f"malformed CSV ({e})") from e


def _read_rows(path: Path, dataset: str, split_by: str, split: str) -> list[RefBox]:
    out: list[RefBox] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(path, f"header lacks column(s) {', '.join(missing)}; expected "
                                  f"{','.join(CSV_COLUMNS)}", record="line 1")
        for row in reader:
            where = f"line {reader.line_num} (uid {row['uid']})"
            ids = {}
            for col in ("ref_id", "img_id", "sent_id"):
                value = row[col]
                # isascii: str.isdigit also accepts '²' and other digits that int() rejects or reads oddly
                if value is None or not (value.isascii() and value.isdigit()):
                    raise DataFormatError(path, f"expected a non-negative integer, got {value!r}", record=where,
                                          field=col)
                ids[col] = int(value)
            try:
                box_value = json.loads(row["bbox"] or "")
            except json.JSONDecodeError:
                box_value = row["bbox"]
            sent = row["sent"]
            if sent is None:
                raise DataFormatError(path, "row has too few columns", record=where, field="sent")
            if not sent.strip():  # an empty expression would be scored as if the model had been asked something
                raise DataFormatError(path, "empty sentence", record=where, field="sent")
            out.append(RefBox(dataset, split_by, split, row["uid"], ids["ref_id"], ids["img_id"], ids["sent_id"],
                              sent, _box(path, box_value, where, "bbox")))
    return out
