"""One definition of a row: every manifest column (``manifests/schema.py``) has its line in
``jobs/row_mapping.py`` saying where it goes in the engine and in the metadata, and those places
exist. Adding a column to the schema without its mapping fails here, before any image is wrong."""

from __future__ import annotations

import dataclasses

from sdbatch.jobs.row_mapping import ROW_COLUMNS, batch_values, record_values, row_input_values
from sdbatch.jobs.store.metadata import METADATA_SCHEMA, InputTrace, ResultRecord
from sdbatch.manifests.schema import COLUMN_NAMES, GenerationRow
from sdbatch.pipeline.batch import BatchSettings, RowInput

ROW_ONLY = {"row_index", "key", "extras"}  # GenerationRow's own fields, not manifest columns


def names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_every_schema_column_has_its_row_field_and_mapping_line():
    assert set(COLUMN_NAMES) == names(GenerationRow) - ROW_ONLY, "GenerationRow and the schema differ"
    missing = [c for c in COLUMN_NAMES if c not in ROW_COLUMNS]
    assert not missing, f"schema columns with no line in jobs/row_mapping.py: {missing}"
    assert set(ROW_COLUMNS) <= set(COLUMN_NAMES), "row_mapping.py names a column the schema lacks"


def test_every_mapping_names_a_real_destination():
    engine = {"row": names(RowInput), "batch": names(BatchSettings)}
    wrong = []
    for column, goes in ROW_COLUMNS.items():
        if goes.engine not in ("", "model"):
            kind, _, field = goes.engine.partition(".")
            if field not in engine.get(kind, ()):
                wrong.append(f"{column} -> engine {goes.engine}")
        kind, _, field = goes.metadata.rpartition(".")
        if field not in (names(InputTrace) if kind == "trace" else names(ResultRecord)):
            wrong.append(f"{column} -> metadata {goes.metadata}")
    assert not wrong, wrong
    written = names(ResultRecord) - {"trace"} | names(InputTrace)
    assert written == set(METADATA_SCHEMA.names), "ResultRecord and METADATA_SCHEMA differ"


def _row(**overrides) -> GenerationRow:
    """A row with every column set to a value that is not its default."""
    values = dict(row_index=3, key="k", id="the-id", prompt="a fox", seed=11, negative_prompt="blur",
                  mode="img2img", guidance_scale=4.5, steps=9, width=48, height=40, scheduler="ddim",
                  strength=0.6, init_image="in.png", model="m", guidance_rescale=0.3, prompt_2="p2",
                  negative_prompt_2="n2", original_width=64, original_height=72, crop_top=4, crop_left=8,
                  refiner_start=0.7, prompt_syntax="a1111", clip_skip=2, loras="s:0.5")
    values.update(overrides)
    return GenerationRow(**values)


def test_a_row_reaches_the_engine_and_the_metadata_as_written():
    row = _row()
    passed = {**row_input_values(row), **batch_values(row)}
    for column, goes in ROW_COLUMNS.items():
        if goes.engine.startswith(("row.", "batch.")) and not goes.made:
            assert passed[goes.engine.partition(".")[2]] == getattr(row, column), column
    RowInput(**row_input_values(row))  # the names are the dataclasses' own
    BatchSettings(width=8, height=8, **batch_values(row))
    record = ResultRecord.for_row(row, "00000")
    for column, goes in ROW_COLUMNS.items():
        if not goes.metadata.startswith("trace."):
            assert getattr(record, goes.metadata) == getattr(row, column), column
    assert ResultRecord.for_row(_row(mode="txt2img", init_image=None), "00000").strength is None
    assert record_values(row)["strength"] == 0.6


def test_modes_and_prompt_syntaxes_have_one_owner_each_side():
    """The manifest's words for modes and prompt syntaxes are the engine's: a mode the schema
    accepts has a start in the engine, and the defaults agree."""
    from sdbatch.manifests.schema import DEFAULT_MODE, DEFAULT_PROMPT_SYNTAX, MODES, PROMPT_SYNTAXES
    from sdbatch.pipeline.modes import STARTS
    from sdbatch.pipeline.prompt_syntax import SYNTAXES

    assert MODES == tuple(STARTS)
    assert PROMPT_SYNTAXES == SYNTAXES
    assert BatchSettings.mode == DEFAULT_MODE and RowInput.prompt_syntax == DEFAULT_PROMPT_SYNTAX
    assert ResultRecord.prompt_syntax == DEFAULT_PROMPT_SYNTAX
