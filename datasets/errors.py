"""The error every reader raises on bad input: it names the file, the record and the field."""

from __future__ import annotations

from pathlib import Path


class DataFormatError(ValueError):
    """Bad or missing input data.

    Args:
        path: the file (or folder) that is wrong.
        problem: what is wrong and what was expected.
        record: which record inside the file (e.g. ``"record 17 (scene0011_00/5/3)"``), if any.
        field: which field of the record or file, if any.
    """

    def __init__(self, path: str | Path, problem: str, record: str | None = None, field: str | None = None):
        self.path = str(path)
        self.record = record
        self.field = field
        self.problem = problem
        where = self.path
        if record is not None:
            where += f", {record}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
