"""Multi3DRefer annotation files (the text side of Multi3DRes): reader, writer, load report (data spec §6).

File format (``multi3drefer_{train,val}.json``): a JSON list of records with ``scene_id``, ``object_name``,
``ann_id`` (int, unique within the scene), ``description``, ``object_ids`` (all targets; ``[]`` is a
zero-target description), ``eval_type`` and the metadata flags ``spatial``, ``color``, ``texture``,
``shape``. Some versions also carry ``object_id``, ``token``, ``aabb_3d_min`` / ``aabb_3d_max``.

Choices where the spec leaves room:
- ``eval_type`` must be one of ``EVAL_TYPES``; the sixth bucket ``zt`` (Hugging Face parquet release) is
  accepted as its own group and never guessed into ``zt_w_d`` / ``zt_wo_d``.
- Consistency of ``eval_type`` with ``len(object_ids)`` (0 ⇔ zt*, 1 ⇔ st*, ≥2 ⇔ mt) is counted in the
  load report, not raised: the published numbers were computed on the files as they are.
- ``ReferRecord`` is frozen and has no metadata field, so everything the record type does not hold (the
  four flags, legacy ``object_id``, boxes, unknown keys) is kept per record in ``records.meta`` keyed by
  ``sample_id``. ``write_multi3drefer`` writes it back, so read -> write -> read gives the same JSON
  values. Records without metadata are written with the four flags False.
- When ``object_ids`` is absent, ``[object_id]`` is used (as MDIN does); such a record is written back
  with an explicit ``object_ids`` (plus its ``object_id``), so only that record's JSON gains a key.
- Duplicate ids inside one ``object_ids`` list and duplicate (scene_id, ann_id) keys are format errors.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets.errors import DataFormatError
from datasets.records import EVAL_TYPES, ReferRecord
from datasets.scanrefer import (
    check_name,
    check_text,
    check_tokens,
    normalise_descriptions,
    parse_int,
    read_json_list,
    write_json_atomic,
)

log = logging.getLogger(__name__)

META_FLAGS = ("spatial", "color", "texture", "shape")
_RECORD_FIELDS = ("scene_id", "object_name", "ann_id", "description", "object_ids", "eval_type", "token")


def expected_target_count(eval_type: str) -> str:
    """What ``len(object_ids)`` an eval_type implies: ``"0"`` (zt*), ``"1"`` (st*) or ``">=2"`` (mt)."""
    if eval_type.startswith("zt"):
        return "0"
    if eval_type.startswith("st"):
        return "1"
    return ">=2"


def target_count_class(n: int) -> str:
    """``len(object_ids)`` in the classes of ``expected_target_count``."""
    return "0" if n == 0 else "1" if n == 1 else ">=2"


@dataclass
class Multi3DReferReport:
    """What loading a Multi3DRefer file found (§3: per-split counts are unconfirmed, so they are logged).

    Attributes:
        path: the file read.
        num_records: records loaded.
        eval_types: records per eval_type.
        target_counts: records per target count class (``"0"``, ``"1"``, ``">=2"``).
        inconsistent: one line per record whose eval_type disagrees with its number of targets.
        legacy_object_id: records that had no ``object_ids`` and fell back to ``[object_id]``.
        normaliser: per text rule, the number of descriptions it changed.
    """

    path: str
    num_records: int = 0
    eval_types: Counter[str] = field(default_factory=Counter)
    target_counts: Counter[str] = field(default_factory=Counter)
    inconsistent: list[str] = field(default_factory=list)
    legacy_object_id: int = 0
    normaliser: Counter[str] = field(default_factory=Counter)

    @property
    def num_inconsistent(self) -> int:
        """Records whose eval_type disagrees with ``len(object_ids)`` (expected 0, unconfirmed)."""
        return len(self.inconsistent)

    def summary(self) -> str:
        """One line for logs and dataset manifests."""
        types = ", ".join(f"{t} {self.eval_types[t]}" for t in EVAL_TYPES if self.eval_types.get(t))
        return (f"{self.path}: {self.num_records} records ({types}); {self.num_inconsistent} with eval_type "
                f"inconsistent with object_ids; {self.legacy_object_id} via legacy object_id")


class Multi3DReferRecords(list[ReferRecord]):
    """The loaded records (a plain list of ``ReferRecord``) plus ``report`` and per-record ``meta``."""

    def __init__(self, records: Iterable[ReferRecord], report: Multi3DReferReport,
                 meta: dict[str, dict[str, Any]]):
        super().__init__(records)
        self.report = report
        self.meta = meta


def _object_ids(path: Path, rec: dict[str, Any], where: str, report: Multi3DReferReport) -> tuple[int, ...]:
    if "object_ids" not in rec:
        if "object_id" not in rec:
            raise DataFormatError(path, "required field is missing (nor is there a legacy object_id)",
                                  record=where, field="object_ids")
        report.legacy_object_id += 1
        return (parse_int(path, rec["object_id"], where, "object_id"),)
    value = rec["object_ids"]
    if not isinstance(value, list):
        raise DataFormatError(path, f"expected a list of object ids, got {type(value).__name__}",
                              record=where, field="object_ids")
    ids = tuple(parse_int(path, v, where, "object_ids") for v in value)
    if len(set(ids)) != len(ids):
        raise DataFormatError(path, f"duplicate ids in {list(ids)}", record=where, field="object_ids")
    return ids


def _meta(path: Path, rec: dict[str, Any], where: str) -> dict[str, Any]:
    """Fields that ``ReferRecord`` does not hold, kept for the writer; flags must be booleans."""
    meta = {k: v for k, v in rec.items() if k not in _RECORD_FIELDS}
    for flag in META_FLAGS:
        if flag in meta and not isinstance(meta[flag], bool):
            raise DataFormatError(path, f"expected true/false, got {meta[flag]!r}", record=where, field=flag)
    return meta


def load_multi3drefer(path: str | Path, normalise: bool = True) -> Multi3DReferRecords:
    """Read ``multi3drefer_{train,val}.json`` into ``ReferRecord``s (file order), with a load report.

    Args:
        path: the Multi3DRefer JSON file.
        normalise: put the normalised text (``datasets.text_normalise``) in ``description``; ``raw`` keeps
            the file's text either way.

    Returns:
        A list of records with ``.report`` (``Multi3DReferReport``: counts, eval_type/target-count
        inconsistencies, normaliser changes) and ``.meta`` (``sample_id`` -> fields not in the record).

    Raises:
        DataFormatError: naming the file, the record (index and ``scene/ann_id``) and the field, for
            malformed JSON, a missing field, a non-integer id, an empty or word-less description, an
            unknown eval_type, a non-boolean flag or a duplicate (scene_id, ann_id).
    """
    path = Path(path)
    data = read_json_list(path, "Multi3DRefer")
    report = Multi3DReferReport(path=str(path))
    parsed: list[dict[str, Any]] = []
    meta: dict[str, dict[str, Any]] = {}
    seen: dict[tuple[str, int], int] = {}
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(rec).__name__}", record=where)
        if "scene_id" in rec and "ann_id" in rec:
            where = f"record {i} ({rec['scene_id']}/{rec['ann_id']})"  # the key as written in the file
        for key in ("scene_id", "object_name", "ann_id", "description", "eval_type"):
            if key not in rec:
                raise DataFormatError(path, "required field is missing", record=where, field=key)
        scene, name = check_name(path, rec["scene_id"], where, "scene_id"), rec["object_name"]
        ann = parse_int(path, rec["ann_id"], where, "ann_id")
        if (scene, ann) in seen:
            raise DataFormatError(path, f"duplicate key (scene_id, ann_id), first at record {seen[scene, ann]}",
                                  record=where, field="scene_id/ann_id")
        seen[scene, ann] = i
        if not isinstance(name, str):  # may be empty in principle; the class name is metadata for zt records
            raise DataFormatError(path, f"expected a string, got {name!r}", record=where, field="object_name")
        eval_type = rec["eval_type"]
        if eval_type not in EVAL_TYPES:
            raise DataFormatError(path, f"unknown eval_type {eval_type!r}; expected one of {', '.join(EVAL_TYPES)}",
                                  record=where, field="eval_type")
        ids = _object_ids(path, rec, where, report)
        if target_count_class(len(ids)) != expected_target_count(eval_type):
            report.inconsistent.append(f"{where}: eval_type {eval_type} with {len(ids)} object_ids")
        report.eval_types[eval_type] += 1
        report.target_counts[target_count_class(len(ids))] += 1
        meta[f"{scene}/{ann}"] = _meta(path, rec, where)
        parsed.append({"scene_id": scene, "ann_id": ann, "object_ids": ids, "object_name": name,
                       "eval_type": eval_type, "raw": check_text(path, rec["description"], where, "description"),
                       "tokens": check_tokens(path, rec["token"], where) if "token" in rec else None})
    keys = [f"record {i} ({p['scene_id']}/{p['ann_id']})" for i, p in enumerate(parsed)]
    texts, report.normaliser = normalise_descriptions(path, [p["raw"] for p in parsed], keys, normalise)
    records = [ReferRecord(scene_id=p["scene_id"], ann_id=p["ann_id"], object_ids=p["object_ids"],
                           object_name=p["object_name"], description=text, source="multi3drefer",
                           tokens=p["tokens"], eval_type=p["eval_type"], raw=p["raw"])
               for p, text in zip(parsed, texts)]
    report.num_records = len(records)
    log.info(report.summary())
    if report.inconsistent:
        log.warning("%s: %d records with eval_type inconsistent with object_ids, e.g. %s", path,
                    report.num_inconsistent, report.inconsistent[0])
    return Multi3DReferRecords(records, report, meta)


def write_multi3drefer(records: Iterable[ReferRecord], path: str | Path,
                       meta: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write records as a Multi3DRefer JSON file, atomically.

    Args:
        records: Multi3DRefer records (``eval_type`` set).
        path: output file.
        meta: ``sample_id`` -> extra fields (flags, legacy keys); defaults to ``records.meta`` when the
            records come from ``load_multi3drefer``. Missing flags are written as False.

    ``description`` is ``record.raw`` when set (normalisation is never baked into files); ``token`` is
    written only for records that carry tokens.
    """
    if meta is None:
        meta = getattr(records, "meta", {})
    out = []
    for r in records:
        if r.eval_type is None:
            raise ValueError(f"{r.sample_id}: a Multi3DRefer record needs an eval_type")
        extra = dict(meta.get(r.sample_id, {}))
        rec: dict[str, Any] = {"scene_id": r.scene_id, "object_name": r.object_name, "ann_id": r.ann_id,
                               "description": r.raw if r.raw is not None else r.description,
                               "object_ids": list(r.object_ids), "eval_type": r.eval_type}
        for flag in META_FLAGS:
            rec[flag] = bool(extra.pop(flag, False))
        if r.tokens is not None:
            rec["token"] = list(r.tokens)
        rec.update(extra)
        out.append(rec)
    write_json_atomic(path, out)
