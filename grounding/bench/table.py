"""The benchmark table of docs/benchmarks.md: the marked block that ``grounding bench all`` rewrites.

The block lies between ``<!-- bench-all:begin -->`` and ``<!-- bench-all:end -->``. Everything outside it (the
prose sections) is never touched. Inside it is one Markdown table, one row per figure::

    | benchmark | figure | command | machine | date | revision |

A run replaces the rows of its own machine (the ``machine`` cell equals this machine's description) and keeps the
rows of every other machine, so CPU rows written here and GPU rows written on a lent GPU machine live side by side.
With ``--only``, only this machine's rows of the benchmarks that ran are replaced. Rows are ordered by benchmark
kind (the ``grounding bench WHAT`` of their command), then machine, then as written.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BEGIN", "END", "COLUMNS", "Row", "merge_rows", "parse_block", "render_block", "rewrite_doc",
           "write_atomic"]

BEGIN = "<!-- bench-all:begin -->"
END = "<!-- bench-all:end -->"
COLUMNS = ("benchmark", "figure", "command", "machine", "date", "revision")
NOTE = "Written by `grounding bench all`: one row per figure; a run replaces its own machine's rows and keeps others."
KIND_ORDER = ("prepare", "superpoints", "rgsan", "backbone")
_SPLIT = re.compile(r"(?<!\\)\|")


@dataclass(frozen=True)
class Row:
    """One figure of the table; ``command`` is the equivalent single ``grounding bench ...`` command."""

    benchmark: str
    figure: str
    command: str
    machine: str
    date: str
    revision: str

    @property
    def kind(self) -> str:
        """The ``WHAT`` of ``grounding bench WHAT ...`` (empty when the command is not one)."""
        words = self.command.split()
        return words[2] if len(words) > 2 and words[:2] == ["grounding", "bench"] else ""

    def cells(self) -> list[str]:
        return [self.benchmark, self.figure, f"`{self.command}`", self.machine, self.date, self.revision]


def _escape(cell: str) -> str:
    # a cell is one line and "|" ends it: both would break the table
    return " ".join(cell.split()).replace("|", "\\|")


def _row_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_escape(c) for c in cells) + " |"


def _split_cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner[1:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner[1:]
    return [c.strip().replace("\\|", "|") for c in _SPLIT.split(inner)]


def _find_block(text: str) -> tuple[int, int] | None:
    """(start of the begin marker, end of the end marker) in ``text``, or None when the doc has no block."""
    if text.count(BEGIN) != text.count(END) or text.count(BEGIN) > 1:
        raise ValueError(f"expected at most one {BEGIN} ... {END} block, found {text.count(BEGIN)} begin and "
                         f"{text.count(END)} end markers")
    if BEGIN not in text:
        return None
    start, end = text.index(BEGIN), text.index(END)
    if end < start:
        raise ValueError(f"{END} comes before {BEGIN}")
    return start, end + len(END)


def parse_block(text: str) -> list[Row]:
    """The rows of the doc's marked block (none when it has no block or an empty table).

    Raises:
        ValueError: on misplaced markers or a row without the six cells, naming the line, so that a hand-edited
        table is never silently dropped by the next rewrite.
    """
    span = _find_block(text)
    if span is None:
        return []
    rows = []
    for line in text[span[0] + len(BEGIN):span[1] - len(END)].splitlines():
        if not line.lstrip().startswith("|"):
            continue
        cells = _split_cells(line)
        if [c.lower() for c in cells] == list(COLUMNS) or all(set(c) <= set(":-") for c in cells):
            continue  # the header or the separator
        if len(cells) != len(COLUMNS):
            raise ValueError(f"benchmark table row has {len(cells)} cells, expected {len(COLUMNS)}: {line!r}")
        cells[2] = cells[2].strip("`")
        rows.append(Row(*cells))
    return rows


def render_block(rows: Iterable[Row]) -> str:
    """The marked block, markers included: the note, then the table (header only when there are no rows)."""
    lines = [BEGIN, NOTE, "", _row_line(COLUMNS), "|" + "---|" * len(COLUMNS)]
    lines += [_row_line(r.cells()) for r in rows]
    lines.append(END)
    return "\n".join(lines)


def merge_rows(old: Iterable[Row], new: Iterable[Row], machine: str,
               replaced: set[str] | None = None) -> list[Row]:
    """``old`` without this machine's replaced rows, plus ``new``, ordered by kind, then machine.

    Args:
        machine: this machine's description; rows of any other machine are kept as they are.
        replaced: the benchmark labels this run measured (or tried to); None replaces all of this machine's rows.
    """
    kept = [r for r in old if r.machine != machine or (replaced is not None and r.benchmark not in replaced)]
    rows = kept + list(new)

    def key(r: Row) -> tuple[int, str]:
        rank = KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else len(KIND_ORDER)
        return rank, r.machine

    return sorted(rows, key=key)  # stable: within a kind and machine, rows keep their order


def rewrite_doc(text: str, rows: Iterable[Row]) -> str:
    """``text`` with its marked block replaced by one holding ``rows``; the rest is kept byte for byte.

    A doc without a block gets one under its introduction: before the first ``## `` heading, else at the end.
    """
    block = render_block(rows)
    span = _find_block(text)
    if span is not None:
        return text[:span[0]] + block + text[span[1]:]
    heading = re.search(r"^## ", text, flags=re.MULTILINE)
    if heading is None:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:heading.start()] + block + "\n\n" + text[heading.start():]


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename (no half-written doc)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
