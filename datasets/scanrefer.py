"""ScanRefer annotation files: reader, writer, unique/multiple split, scene checks (data spec §4, §5, §8.1).

File format (``ScanRefer_filtered_{train,val}.json``): a JSON list of records with ``scene_id``,
``object_id`` (str holding an int), ``object_name``, ``ann_id`` (str holding an int), ``description`` and
``token`` (the pre-tokenized, lower-case description). The key is (scene_id, object_id, ann_id); ann_id
alone is only unique per object. File order is kept, but nothing may rely on it.

Text seen by models:
- ``ReferRecord.description``: the description after ``datasets.text_normalise.normalise`` (or as in the
  file with ``normalise=False``); ``ReferRecord.raw`` always holds the file's text.
- RG-SAN / 3D-STMN feed ``token[:78]`` joined by single spaces, not the description (§7.1); use
  ``scanrefer_model_text`` for exactly that input.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from datasets.errors import DataFormatError
from datasets.records import ReferRecord
from datasets.scannet.labels import SCANREFER_OTHERS, LabelRow, read_label_tsv, scanrefer_raw2label
from datasets.text_normalise import format_stats, normalise_with_stats

log = logging.getLogger(__name__)

SCANREFER_FIELDS = ("scene_id", "object_id", "object_name", "ann_id", "description", "token")
RGSAN_MAX_WORDS = 78  # RG-SAN / 3D-STMN `max_len`: words kept from `token` (§7.1)

_INT_STR = re.compile(r"[0-9]+")
_WORD = re.compile(r"\w")
# Approximate PTB-style split used only when a record carries no `token` list: clitics ('s, n't) and
# punctuation become their own tokens, as in the released files.
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")


class LookupMismatch(NamedTuple):
    """One record whose computed unique/multiple value differs from (or is missing in) a published lookup."""

    sample_id: str
    computed: int
    published: int | None


def read_json_list(path: Path, what: str) -> list[Any]:
    """Read a JSON file whose top level must be a list; errors name the file (shared with Multi3DRefer)."""
    if not path.is_file():
        raise DataFormatError(path, f"{what} annotation file is missing")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise DataFormatError(path, f"expected a JSON list of {what} records, got {type(data).__name__}")
    return data


def parse_int(path: Path, value: Any, where: str, field: str) -> int:
    """A non-negative id stored as an int or as a string of digits (ScanRefer stores ids as strings)."""
    if isinstance(value, bool):  # bool is an int subclass; true/false is never an id
        raise DataFormatError(path, f"expected an integer id, got {value!r}", record=where, field=field)
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and _INT_STR.fullmatch(value):
        return int(value)
    raise DataFormatError(path, f"expected a non-negative integer id (int or digit string), got {value!r}",
                          record=where, field=field)


def check_text(path: Path, value: Any, where: str, field: str) -> str:
    """A description must be a string with at least one word character (``\\w``)."""
    if not isinstance(value, str):
        raise DataFormatError(path, f"expected a string, got {type(value).__name__}", record=where, field=field)
    if not value.strip():
        raise DataFormatError(path, "empty or whitespace-only description", record=where, field=field)
    if not _WORD.search(value):
        raise DataFormatError(path, f"description has no words: {value!r}", record=where, field=field)
    return value


def check_name(path: Path, value: Any, where: str, field: str) -> str:
    """scene_id / object_name: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, f"expected a non-empty string, got {value!r}", record=where, field=field)
    return value


def check_tokens(path: Path, value: Any, where: str, field: str = "token") -> tuple[str, ...]:
    """The pre-tokenized description: a non-empty list of strings.

    Empty is refused because RG-SAN / 3D-STMN read ``token``, not the description: an empty list would
    hand the model an empty text while the record still looks fine.
    """
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataFormatError(path, "expected a list of strings", record=where, field=field)
    if not value:
        raise DataFormatError(path, "empty token list (the model would see no text)", record=where, field=field)
    return tuple(value)


def normalise_descriptions(path: Path, raws: Sequence[str], keys: Sequence[str], normalise: bool
                           ) -> tuple[list[str], Counter[str]]:
    """Apply the text normaliser (or not), log how many records each rule changed, check words remain.

    Returns the texts and the per-rule change counts (empty when ``normalise`` is False).
    """
    if not normalise:
        return list(raws), Counter()
    texts, changed = normalise_with_stats(raws)
    log.info("%s: %s", path, format_stats(changed, len(raws)))
    for i, text in enumerate(texts):
        if not _WORD.search(text):  # only the backslash rule can do this, but a model must get words
            raise DataFormatError(path, f"description has no words after normalisation: {raws[i]!r}",
                                  record=keys[i], field="description")
    return texts, changed


def load_scanrefer(path: str | Path, label_map: str | Path | Mapping[str, LabelRow] | None = None,
                   normalise: bool = True) -> list[ReferRecord]:
    """Read ``ScanRefer_filtered_{train,val}.json`` into ``ReferRecord``s, in file order.

    Args:
        path: the ScanRefer JSON file.
        label_map: ``scannetv2-labels.combined.tsv`` (path) or its parsed rows; when given, each record's
            ``unique`` flag is computed with ScanRefer's rule (§5) over the loaded records.
        normalise: put the normalised text (``datasets.text_normalise``) in ``description``.

    Raises:
        DataFormatError: naming the file, the record (index and composite key) and the field, for
            malformed JSON, a missing field, a non-integer id, an empty or word-less description, a
            malformed or empty ``token`` list or a duplicate (scene_id, object_id, ann_id). ``token`` is optional
            (files written from other sources may lack it); every other field is required.
    """
    path = Path(path)
    data = read_json_list(path, "ScanRefer")
    parsed: list[dict[str, Any]] = []
    seen: dict[tuple[str, int, int], int] = {}
    for i, rec in enumerate(data):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(rec).__name__}", record=where)
        if all(k in rec for k in ("scene_id", "object_id", "ann_id")):
            # The composite key as written in the file, so a bad id is shown as it is.
            where = f"record {i} ({rec['scene_id']}/{rec['object_id']}/{rec['ann_id']})"
        for key in SCANREFER_FIELDS[:5]:
            if key not in rec:
                raise DataFormatError(path, "required field is missing", record=where, field=key)
        scene = check_name(path, rec["scene_id"], where, "scene_id")
        obj = parse_int(path, rec["object_id"], where, "object_id")
        ann = parse_int(path, rec["ann_id"], where, "ann_id")
        key = (scene, obj, ann)
        if key in seen:
            raise DataFormatError(path, f"duplicate key (scene_id, object_id, ann_id), first at record {seen[key]}",
                                  record=where, field="scene_id/object_id/ann_id")
        seen[key] = i
        parsed.append({
            "scene_id": scene, "object_id": obj, "ann_id": ann,
            "object_name": check_name(path, rec["object_name"], where, "object_name"),
            "raw": check_text(path, rec["description"], where, "description"),
            "tokens": check_tokens(path, rec["token"], where) if "token" in rec else None,
        })
    keys = [f"record {i} ({p['scene_id']}/{p['object_id']}/{p['ann_id']})" for i, p in enumerate(parsed)]
    texts, _ = normalise_descriptions(path, [p["raw"] for p in parsed], keys, normalise)
    records = [ReferRecord(scene_id=p["scene_id"], ann_id=p["ann_id"], object_ids=(p["object_id"],),
                           object_name=p["object_name"], description=text, source="scanrefer",
                           tokens=p["tokens"], raw=p["raw"]) for p, text in zip(parsed, texts)]
    if label_map is not None:
        flags = scanrefer_unique_flags(records, label_map)
        records = [replace(r, unique=u) for r, u in zip(records, flags)]
        log.info("%s: %d unique, %d multiple", path, sum(flags), len(flags) - sum(flags))
    return records


def _raw2label(label_map: str | Path | Mapping[str, LabelRow]) -> dict[str, int]:
    rows = read_label_tsv(label_map) if isinstance(label_map, (str, Path)) else dict(label_map)
    return scanrefer_raw2label(rows)


def scanrefer_unique_flags(records: Sequence[ReferRecord],
                           label_map: str | Path | Mapping[str, LabelRow]) -> list[bool]:
    """ScanRefer's unique flag per record, exactly as ``_get_unique_multiple_lookup`` (§5).

    The class of a record is ``raw2label[object_name with "_" -> " "]`` (17 = others when the name is not
    in the TSV). Per scene, each distinct object_id among ``records`` contributes one class, taken from
    its first record; only annotated objects count, never the other instances of the room. A record is
    unique iff exactly one such object of its scene has its class. So the result depends on which
    records are passed: pass a whole split (splits have disjoint scenes).
    """
    raw2label = _raw2label(label_map)

    def cls(r: ReferRecord) -> int:
        return raw2label.get(r.object_name.replace("_", " "), SCANREFER_OTHERS)

    scene_classes: dict[str, dict[int, int]] = {}
    for r in records:
        objects = scene_classes.setdefault(r.scene_id, {})
        objects.setdefault(r.object_ids[0], cls(r))  # first occurrence wins, as in ScanRefer
    counts = {scene: _count(objs.values()) for scene, objs in scene_classes.items()}
    return [counts[r.scene_id].get(cls(r), 0) == 1 for r in records]


def _count(values: Iterable[int]) -> dict[int, int]:
    out: dict[int, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def unique_multiple_lookup(records: Sequence[ReferRecord], label_map: str | Path | Mapping[str, LabelRow]
                           ) -> dict[str, dict[str, dict[str, int]]]:
    """The lookup in the published ``lookup.json`` layout: ``{scene: {object_id: {ann_id: 0|1}}}``.

    Keys are strings (as in the published file, so ``json.dump`` reproduces its layout); **0 = unique,
    1 = multiple**.
    """
    out: dict[str, dict[str, dict[str, int]]] = {}
    for r, unique in zip(records, scanrefer_unique_flags(records, label_map)):
        out.setdefault(r.scene_id, {}).setdefault(str(r.object_ids[0]), {})[str(r.ann_id)] = 0 if unique else 1
    return out


def compare_with_lookup(records: Sequence[ReferRecord], lookup_json_path: str | Path
                        ) -> tuple[int, list[LookupMismatch]]:
    """Compare the records' ``unique`` flags with a published ``lookup.json`` (0 = unique).

    Only the given records are compared (the published file covers train and val). Records must have
    ``unique`` computed (``load_scanrefer(..., label_map=...)``).

    Returns:
        ``(matches, mismatches)``; a record absent from the lookup is a mismatch with ``published=None``.
    """
    path = Path(lookup_json_path)
    if not path.is_file():
        raise DataFormatError(path, "lookup file is missing")
    try:
        lookup = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataFormatError(path, f"not valid JSON ({e})") from e
    if not isinstance(lookup, dict):
        raise DataFormatError(path, "expected {scene_id: {object_id: {ann_id: 0|1}}}")
    matches, mismatches = 0, []
    for r in records:
        if r.unique is None:
            raise ValueError(f"record {r.sample_id} has no unique flag; load it with a label_map")
        computed = 0 if r.unique else 1
        published: Any = lookup
        for key in (r.scene_id, str(r.object_ids[0]), str(r.ann_id)):
            published = published.get(key) if isinstance(published, dict) else None
        if published == computed:
            matches += 1
        else:
            mismatches.append(LookupMismatch(r.sample_id, computed, published))
    return matches, mismatches


def simple_tokenise(text: str) -> list[str]:
    """Lower-case word/punctuation split, close to the released ``token`` lists (``it's`` -> ``it 's``)."""
    return _TOKEN.findall(text.lower())


def scanrefer_model_text(record: ReferRecord, max_words: int = RGSAN_MAX_WORDS) -> str:
    """RG-SAN / 3D-STMN text input: ``token[:max_words]`` joined by single spaces (§4, §7.1).

    Records without tokens fall back to ``simple_tokenise`` of the file's text.
    """
    tokens = record.tokens if record.tokens is not None else simple_tokenise(record.raw or record.description)
    return " ".join(tokens[:max_words])


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write JSON via a temporary file and a rename, so readers never see half a file.

    ``indent=4`` with ASCII escapes reproduces the released ScanRefer files byte for byte.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=4)
    os.replace(tmp, path)


def write_scanrefer(records: Iterable[ReferRecord], path: str | Path) -> None:
    """Write records as a ScanRefer JSON file (ids as strings, the file's raw text, token list).

    ``description`` is ``record.raw`` when set, so normalisation is never baked into files; ``token`` is
    ``record.tokens`` or ``simple_tokenise`` of the text. Reading the written file gives back the input.
    """
    out = []
    for r in records:
        if r.source != "scanrefer" or len(r.object_ids) != 1:
            raise ValueError(f"{r.sample_id}: only single-target ScanRefer records can be written as ScanRefer")
        text = r.raw if r.raw is not None else r.description
        tokens = list(r.tokens) if r.tokens is not None else simple_tokenise(text)
        out.append({"scene_id": r.scene_id, "object_id": str(r.object_ids[0]), "object_name": r.object_name,
                    "ann_id": str(r.ann_id), "description": text, "token": tokens})
    write_json_atomic(path, out)


def check_records_against_scene(records: Iterable[ReferRecord], instance: np.ndarray, scene_path: str | Path,
                                scene_id: str | None = None) -> int:
    """Check that every target id of the records exists in the scene's instance labels (§2, §6.3).

    Args:
        records: ScanRefer or Multi3DRefer records.
        instance: ``(N,) int`` per-point instance labels of the scene (-1 = unannotated).
        scene_path: the scene's file or folder, named in errors.
        scene_id: check only the records of this scene; when None all records must belong to one scene.

    Returns:
        The number of records checked.

    Raises:
        DataFormatError: naming the record's composite key and field ``object_id`` (ScanRefer) or
            ``object_ids`` (Multi3DRefer) when an id has no point in ``instance``.
    """
    instance = np.asarray(instance)
    if instance.ndim != 1 or not np.issubdtype(instance.dtype, np.integer):
        raise DataFormatError(scene_path, f"expected (N,) integer instance labels, got {instance.dtype} "
                              f"{instance.shape}", field="instance")
    explicit = scene_id is not None
    present = {int(v) for v in np.unique(instance) if v >= 0}
    checked = 0
    for i, r in enumerate(records):
        if scene_id is None:
            scene_id = r.scene_id
        if r.scene_id != scene_id:
            if explicit:
                continue
            raise ValueError(f"records of several scenes ({scene_id}, {r.scene_id}); pass scene_id= to pick one")
        missing = [o for o in r.object_ids if o not in present]
        if missing:
            field = "object_id" if r.source == "scanrefer" else "object_ids"
            raise DataFormatError(scene_path, f"object id(s) {missing} have no point in the scene's instance labels "
                                  f"({len(present)} instance ids present, max {max(present, default=-1)})",
                                  record=f"record {i} ({r.sample_id})", field=field)
        checked += 1
    return checked
