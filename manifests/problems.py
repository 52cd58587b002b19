"""Problems found in a manifest, and the error that refuses it.

A problem is one reason on one column; rows with the same problem are merged into it, keeping the
first few row numbers and the count, so a 10-million-row manifest with one bad column gives one
readable line, not millions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

SHOWN_ROWS = 5
SHOWN_VALUES = 3


def _show_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (bytes, str)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass
class Problem:
    """One reason a column is refused, with the rows it applies to (row numbers count from 0, as
    ``row_index`` in the output metadata). ``rows`` empty and ``count`` 0: the whole column."""

    column: str
    reason: str
    rows: list[int] = field(default_factory=list)
    count: int = 0
    values: list[Any] = field(default_factory=list)

    def add(self, rows: Iterable[int], count: int, values: Iterable[Any] = ()) -> None:
        room = SHOWN_ROWS - len(self.rows)
        if room > 0:
            self.rows.extend(int(r) for r, _ in zip(rows, range(room)))
        self.count += count
        for value in values:
            if len(self.values) >= SHOWN_VALUES:
                break
            if value not in self.values:
                self.values.append(value)

    def message(self) -> str:
        where = f"column '{self.column}'"
        if not self.count:
            where += ", all rows"
        else:
            shown = ", ".join(str(r) for r in self.rows)
            more = ", ..." if self.count > len(self.rows) else ""
            noun = "row" if self.count == 1 else "rows"
            where += f", {noun} {shown}{more} ({self.count:,} {noun})"
        return f"{where}: {self.details()}"

    def details(self) -> str:
        """The reason and the offending values, without the column and rows."""
        got = f", got {', '.join(_show_value(v) for v in self.values)}" if self.values else ""
        return f"{self.reason}{got}"


class ProblemLog:
    """Problems keyed by (column, reason), in the order they were first found."""

    def __init__(self) -> None:
        self._problems: dict[tuple[str, str], Problem] = {}

    def add(self, column: str, reason: str, rows: Iterable[int] = (), count: int = 0,
            values: Iterable[Any] = ()) -> None:
        problem = self._problems.setdefault((column, reason), Problem(column, reason))
        problem.add(rows, count, values)

    def __bool__(self) -> bool:
        return bool(self._problems)

    def __len__(self) -> int:
        return len(self._problems)

    @property
    def problems(self) -> list[Problem]:
        return list(self._problems.values())

    def messages(self) -> list[str]:
        return [p.message() for p in self._problems.values()]


class ManifestError(ValueError):
    """A manifest that cannot run; the message names the column, row(s) and reason."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []

    @classmethod
    def from_problems(cls, problems: list[Problem]) -> "ManifestError":
        lines = [p.message() for p in problems]
        if len(lines) == 1:
            return cls(lines[0], problems)
        return cls(f"{len(lines)} problems:\n" + "\n".join(f"  {line}" for line in lines), problems)
