"""Errors and defect counts for file readers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


class DataError(ValueError):
    """A malformed record in an input file: names the file, the row (or byte offset) and why."""

    def __init__(
        self, path: str | Path, problem: str, *, row: int | None = None, offset: int | None = None
    ) -> None:
        self.path = str(path)
        self.row = row
        self.offset = offset
        self.problem = problem
        where = (
            f"row {row}" if row is not None else (f"byte {offset}" if offset is not None else "")
        )
        super().__init__(f"{self.path}{': ' + where if where else ''}: {problem}")


class Defects(Counter):
    """Counts of skipped defects by kind, filled by readers when ``skip_bad`` is set.

    Keys are short kinds ("non_positive_price", "bad_side", ...); ``first`` keeps where each kind
    was first seen, so the end-of-run summary can still point at a row.
    """

    def __init__(self) -> None:
        super().__init__()
        self.first: dict[str, str] = {}

    def add(self, kind: str, where: str, n: int = 1) -> None:
        self[kind] += n
        self.first.setdefault(kind, where)
