"""Normalisation of a checked record batch: every schema column present, in its normal type, with
defaults filled, and an ``id`` on every row (the given one, or one derived from the row).

Seeds stay null where not given: they are derived from the final id by ``reader``. A row's prompt
syntax defaults to the job's (``--prompt-syntax``), and its LoRAs are put in their normal form,
an a1111 prompt's ``<lora:...>`` tags moved into them (``loras.py``).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .ids import derive_ids
from .loras import LoraSyntaxError, row_loras
from .schema import COLUMN_NAMES, COLUMNS, DEFAULT_PROMPT_SYNTAX, DEFAULTS, IMAGE

_CASTS = {c.name: c.type for c in COLUMNS if c.type is not None}


def _image_column(values: pa.Array | None, rows: int) -> pa.Array:
    """String or binary as given (view/dictionary/large forms made plain); empty cells are null."""
    if values is None or pa.types.is_null(values.type):
        return pa.nulls(rows, pa.string())
    t = values.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    binary = (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
              or pa.types.is_fixed_size_binary(t))
    values = pc.cast(values, pa.binary() if binary else pa.string())
    empty = pc.equal(pc.binary_length(values), 0)
    return pc.if_else(empty, pa.scalar(None, values.type), values)


def _normal_loras(columns: dict[str, pa.Array]) -> None:
    """``loras`` in normal form, null where empty; a1111 prompts' LoRA tags moved into it. A value
    that cannot be read is left as it is (the checks refuse it)."""
    loras, prompt = columns["loras"], columns["prompt"]
    given = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(loras), ""), False)
    a1111 = pc.equal(columns["prompt_syntax"], "a1111")
    tagged = pc.fill_null(pc.and_(a1111, pc.match_substring(prompt, "<")), False)
    todo = pc.or_(given, tagged)
    if not pc.any(todo).as_py():
        columns["loras"] = pa.nulls(len(loras), pa.string())
        return
    prompts, values, flags = prompt.to_pylist(), loras.to_pylist(), a1111.to_pylist()
    # Many rows share one LoRA set: each distinct (loras, prompt-if-tagged) is read once. The
    # cache holds what the row's own prompt becomes only when the prompt is part of its key.
    normal: dict[tuple, tuple[str, str | None]] = {}
    out_loras: list[str | None] = [None] * len(values)
    for i in pc.indices_nonzero(todo).to_pylist():
        a1111_row = bool(flags[i])
        key = (values[i], prompts[i] if a1111_row else None)
        if key not in normal:
            try:
                normal[key] = row_loras(values[i], prompts[i], a1111_row)
            except LoraSyntaxError:
                normal[key] = (prompts[i], values[i])
        new_prompt, out_loras[i] = normal[key]
        if a1111_row:  # only a1111 rows lose their <lora:...> tags; other prompts stay as written
            prompts[i] = new_prompt
    columns["prompt"] = pa.array(prompts, pa.string())
    columns["loras"] = pa.array(out_loras, pa.string())


def normalise_batch(batch: pa.RecordBatch, default_model: str, prompt_syntax: str = DEFAULT_PROMPT_SYNTAX) -> pa.Table:
    """The schema columns of ``batch`` normalised (extras are left out; see ``extra_columns``);
    ``prompt_syntax`` is the job's, for rows that name none."""
    rows = batch.num_rows
    names = batch.schema.names
    columns: dict[str, pa.Array] = {}
    for column in COLUMNS:
        values = batch.column(column.name) if column.name in names else None
        if column.kind == IMAGE:
            columns[column.name] = _image_column(values, rows)
            continue
        target = _CASTS[column.name]
        values = pa.nulls(rows, target) if values is None else pc.cast(values, target, safe=False)
        if column.name == "prompt_syntax":
            values = pc.fill_null(values, prompt_syntax)
        elif column.name in DEFAULTS:
            values = pc.fill_null(values, DEFAULTS[column.name])
        columns[column.name] = values
    columns["prompt"] = pc.fill_null(columns["prompt"], "")
    _normal_loras(columns)
    model = columns["model"]
    columns["model"] = pc.if_else(pc.fill_null(pc.equal(model, ""), True), default_model, model)
    table = pa.table({name: columns[name] for name in COLUMN_NAMES})
    given = table.column("id")
    if given.null_count:
        ids = pc.coalesce(given, derive_ids(table))
        table = table.set_column(table.schema.get_field_index("id"), "id", ids)
    return table


def extra_columns(names: list[str]) -> list[str]:
    """Columns that are not part of the schema: carried through to the output metadata."""
    return [n for n in names if n not in COLUMN_NAMES]
