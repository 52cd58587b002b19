"""Which columns become the report's X axis, Y axis and groups, and the grid of cells they make.

Without ``--x``/``--y``/``--group`` the choice looks only at columns whose values differ among
the ok rows, in ``CANDIDATES`` order, then the user's label columns (a column that splits the rows
exactly as an earlier one does, e.g. a label naming each prompt, adds nothing and is left out):

- a label column with a different value in every ok row (a caption, a file name) names rows, not
  settings: it is left out too;
- when more columns differ than there are free axes, prompts (then negative prompts) become the
  groups first: long text reads best as a heading;
- of the rest, the two with the most distinct values are the axes; X (across) gets the one with
  fewer values, Y (down, scrolls) the one with more (ties go by the order above);
- any column still left joins the groups.

Each group's axes hold the values its own rows have (a group split off by a label shows only its
seeds), in ascending order for numbers and in manifest order for text; a combination of those
values without a row is an empty cell.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field

from .rows import ReportError

CANDIDATES = ("prompt", "negative_prompt", "seed", "guidance_scale", "steps", "scheduler", "size",
              "strength", "model", "mode", "loras", "clip_skip", "prompt_syntax")
TEXT_COLUMNS = ("prompt", "negative_prompt")  # group first: long text reads best as a heading
SIZE = "size"  # not a metadata column: "<width>x<height>"
# What users of other tools type, and the column it is here.
ALIASES = {"guidance": "guidance_scale", "cfg": "guidance_scale", "cfg_scale": "guidance_scale",
           "sampler": "scheduler", "num_inference_steps": "steps", "negative": "negative_prompt",
           "denoising_strength": "strength", "seeds": "seed", "prompts": "prompt"}


def cell_value(row: dict, column: str):
    """A row's value on an axis or group column (hashable)."""
    if column == SIZE and SIZE not in row:
        width, height = row.get("width"), row.get("height")
        return None if width is None or height is None else f"{width}x{height}"
    value = row.get(column)
    if isinstance(value, (list, dict)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def format_value(value) -> str:
    """A value as the page and the sheets show it."""
    if value is None:
        return "(none)"
    if isinstance(value, float):
        short = f"{value:g}"
        return short if float(short) == value else repr(value)
    return str(value)


def _order(values: list) -> list:
    """Numbers ascending, anything else in first-seen (manifest) order; None last."""
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        present = sorted(present)
    return present + ([None] if None in values else [])


def _distinct(rows: list[dict], column: str) -> list:
    return list(dict.fromkeys(cell_value(r, column) for r in rows))


def _same_split(rows: list[dict], a: str, b: str) -> bool:
    """Whether columns a and b split the rows into the same parts (one names the other)."""
    pairs = {(cell_value(r, a), cell_value(r, b)) for r in rows}
    return len(pairs) == len(_distinct(rows, a)) == len(_distinct(rows, b))


@dataclass(frozen=True)
class AxisChoice:
    x: str | None
    y: str | None
    group: tuple[str, ...]
    also_varying: tuple[str, ...] = ()  # differ among ok rows but on no axis or group: cells hold several


def available_columns(columns: list[str]) -> list[str]:
    return columns + ([SIZE] if SIZE not in columns and {"width", "height"} <= set(columns) else [])


def check_column(option: str, name: str, columns: list[str]) -> str:
    """The column named by an option; ReportError naming the likely one when it does not exist."""
    names = available_columns(columns)
    if name in names:
        return name
    hint = ALIASES.get(name) or ALIASES.get(name.lower())
    if hint not in names:
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = close[0] if close else None
    if hint is None and any(c.startswith(f"{name}.") for c in names):
        hint = ", ".join(c for c in names if c.startswith(f"{name}."))
    suggestion = f"; did you mean {hint}?" if hint else ""
    raise ReportError(f"{option}: no column {name!r} in the metadata{suggestion}")


def _groupable(rows: list[dict], column: str) -> bool:
    return not any(isinstance(r.get(column), (bytes, bytearray)) for r in rows)


def choose_axes(rows: list[dict], columns: list[str], labels: list[str], x: str | None = None,
                y: str | None = None, group: tuple[str, ...] | None = None) -> AxisChoice:
    """X, Y and group columns: the ones given (checked), the others by the rule in this module's
    docstring."""
    x = check_column("--x", x, columns) if x else None
    y = check_column("--y", y, columns) if y else None
    group = tuple(check_column("--group", g, columns) for g in group) if group is not None else None
    chosen = [c for c in (x, y, *(group or ())) if c]
    if len(chosen) != len(set(chosen)):
        raise ReportError("--x, --y and --group must name different columns")
    ok = [r for r in rows if r.get("status") == "ok"] or rows
    names = set(available_columns(columns))
    varying: list[str] = []
    label_columns = [c for c in labels if c not in CANDIDATES]
    for column in [c for c in CANDIDATES if c in names] + label_columns:
        count = len(_distinct(ok, column)) if column not in chosen and _groupable(ok, column) else 0
        if count < 2 or (column in label_columns and count == len(ok)):  # a label per row names rows
            continue
        if any(_same_split(ok, column, other) for other in varying + chosen):
            continue
        varying.append(column)
    free = [name for name, given in (("x", x), ("y", y)) if not given]
    grouped: list[str] = []
    if group is None and len(varying) > len(free):
        grouped = [c for c in TEXT_COLUMNS if c in varying][: len(varying) - len(free)]
    rest = [c for c in varying if c not in grouped]
    counts = {c: len(_distinct(ok, c)) for c in rest}
    axes = sorted(rest, key=lambda c: -counts[c])[: len(free)]
    axes.sort(key=lambda c: (counts[c], rest.index(c)))  # fewer values across, more down
    if free == ["x", "y"]:
        x, y = (axes + [None, None])[:2]
    elif free == ["x"]:
        x = axes[0] if axes else None
    elif free == ["y"]:
        y = axes[0] if axes else None
    left = [c for c in rest if c not in axes]
    if group is None:
        group = tuple(grouped + left)
        left = []
    return AxisChoice(x, y, tuple(group), tuple(left))


@dataclass
class Group:
    """One grid: its values of the group columns, its axis values, and the rows in each
    (x index, y index) cell."""

    values: tuple
    x_values: list = field(default_factory=lambda: [None])  # [None]: no X column (one column)
    y_values: list = field(default_factory=lambda: [None])
    cells: dict[tuple[int, int], list[dict]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.x_values) * len(self.y_values)


@dataclass
class ReportGrid:
    choice: AxisChoice
    groups: list[Group]

    def value_count(self, axis: str) -> int:
        """How many distinct values axis 'x' or 'y' has over all groups."""
        return len({v for g in self.groups for v in (g.x_values if axis == "x" else g.y_values)})

    def crowded_cells(self) -> int:
        return sum(len(rows) > 1 for g in self.groups for rows in g.cells.values())


def _values(rows: list[dict], column: str | None) -> list:
    return _order(_distinct(rows, column)) if column else [None]


def build_grid(rows: list[dict], choice: AxisChoice) -> ReportGrid:
    """Every row in its group's cell."""
    group_keys = [tuple(cell_value(r, c) for c in choice.group) for r in rows]
    # groups ordered column by column, each column's values ordered as an axis's would be
    orders = [{v: i for i, v in enumerate(_values(rows, c))} for c in choice.group]
    keys = sorted(set(group_keys), key=lambda k: [orders[i][v] for i, v in enumerate(k)])
    members: dict[tuple, list[dict]] = {key: [] for key in keys}
    for row, key in zip(rows, group_keys):
        members[key].append(row)
    groups = []
    for key in keys:
        group = Group(key, _values(members[key], choice.x), _values(members[key], choice.y))
        x_index = {v: i for i, v in enumerate(group.x_values)}
        y_index = {v: i for i, v in enumerate(group.y_values)}
        for row in members[key]:
            xi = x_index[cell_value(row, choice.x)] if choice.x else 0
            yi = y_index[cell_value(row, choice.y)] if choice.y else 0
            group.cells.setdefault((xi, yi), []).append(row)
        groups.append(group)
    return ReportGrid(choice, groups)
