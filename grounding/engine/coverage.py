"""Did an evaluation see every sample of its split exactly once?

A model, a postprocess or a loader that loses samples would otherwise shrink the denominator of mIoU or
Acc@0.5 without a word. After an evaluation, rank 0 compares the merged per-sample records with what the split
holds and the run reports the difference (``metrics.json`` key ``samples``, a warning, and a line under the
printed table).

Datasets declare what an evaluation of them must produce with ``eval_sample_ids()``: the ``sample_id`` of every
record the evaluation must write once, or ``None`` when only the number is fixed (e.g. one sentence drawn per
referred object); then ``len(dataset)`` records are expected. Records whose ids are not in the list (such as the
retrieval task's per-image detection records) are not counted against it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

#: ids listed in the report (the counts are always complete)
MAX_LISTED = 20


def expected_sample_ids(dataset: Any) -> list[str] | None:
    """The ``sample_id`` of every record an evaluation of ``dataset`` must write, or None if not fixed."""
    method = getattr(dataset, "eval_sample_ids", None)
    return None if method is None else method()


def check_coverage(dataset: Any, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Compare the merged per-sample ``records`` of an evaluation with what ``dataset`` holds.

    Returns:
        ``expected`` (samples in the split), ``evaluated`` (distinct expected samples with a record),
        ``skipped`` (expected samples without one) and ``skipped_ids`` (the first :data:`MAX_LISTED` of them),
        ``duplicated`` (expected samples with more than one record) and ``duplicated_ids``; when the dataset
        lists no ids, the check is by count only (``evaluated`` = number of records, ids lists empty).
    """
    ids = expected_sample_ids(dataset)
    if ids is None:
        expected, got = len(dataset), len(records)
        return {"expected": expected, "evaluated": min(got, expected), "skipped": max(expected - got, 0),
                "skipped_ids": [], "duplicated": max(got - expected, 0), "duplicated_ids": [], "by": "count"}
    wanted = set(ids)
    counts = Counter(str(r.get("sample_id")) for r in records if str(r.get("sample_id")) in wanted)
    skipped = [i for i in ids if i not in counts]
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    return {"expected": len(wanted), "evaluated": len(counts), "skipped": len(skipped),
            "skipped_ids": skipped[:MAX_LISTED], "duplicated": len(duplicated),
            "duplicated_ids": duplicated[:MAX_LISTED], "by": "sample_id"}


def coverage_problem(report: dict[str, Any]) -> str | None:
    """A one-line description of what is wrong, or None when every sample was evaluated exactly once."""
    parts = []
    if report["skipped"]:
        listed = ", ".join(report["skipped_ids"])
        parts.append(f"{report['skipped']} of {report['expected']} samples were not evaluated"
                     + (f" (first: {listed})" if listed else ""))
    if report["duplicated"]:
        listed = ", ".join(report["duplicated_ids"])
        parts.append(f"{report['duplicated']} samples were evaluated more than once"
                     + (f" ({listed})" if listed else ""))
    return "; ".join(parts) or None
