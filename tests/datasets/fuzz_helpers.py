"""Helpers shared by the property-based reader tests (tests/datasets/test_fuzz_readers*.py)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from datasets.errors import DataFormatError


@contextmanager
def workdir() -> Iterator[Path]:
    """A fresh folder per hypothesis example (pytest's tmp_path is shared by all examples of a test)."""
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def expect_named(call: Callable[[], Any], path: Path, record: str | None = None, field: str | None = None
                 ) -> DataFormatError:
    """``call()`` must raise DataFormatError naming ``path``; ``record`` is a prefix, ``field`` exact."""
    with pytest.raises(DataFormatError) as info:
        call()
    err = info.value
    assert Path(err.path) == path, str(err)
    if record is not None:
        assert err.record is not None and err.record.startswith(record), str(err)
    if field is not None:
        assert err.field == field, str(err)
    return err
