"""Columns only some model families use (SDXL's second prompts and size conditioning, the refiner's
start), checked against the models the rows name before any work: ``prompt_2`` on an SD 1.5 model
is refused naming the column, the rows and the model, as ``validate`` and ``run`` both do.

``ModelColumnUsage`` watches the validating pass (``plan_manifest``, a batch at a time): per model,
which rows set such a column. Models are located afterwards (``pipeline.model_files``, no torch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.manifests.problems import Problem
from sdbatch.manifests.schema import COLUMNS
from sdbatch.pipeline.model_files import ModelLocation

FAMILY_COLUMNS = {c.name: c.families for c in COLUMNS if c.families}
FAMILY_NAMES = {"sd": "an SD 1.x/2.x model", "sdxl": "an SDXL model"}


@dataclass
class ModelColumnUsage:
    """Rows that set a family-specific column, per (model, column); the models the rows name."""

    model_rows: dict[str, Problem] = field(default_factory=dict)  # the rows of each model
    rows: dict[tuple[str, str], Problem] = field(default_factory=dict)

    @property
    def models(self) -> set[str]:
        return set(self.model_rows)

    def add(self, offset: int, table: pa.Table, batch: pa.RecordBatch | None = None) -> None:
        model = table.column("model")
        for name in pc.unique(model).to_pylist():
            rows = np.flatnonzero(pc.equal(model, name).to_numpy(zero_copy_only=False)) + offset
            self.model_rows.setdefault(name, Problem("model", "")).add(rows, len(rows))
        for name in FAMILY_COLUMNS:
            values = table.column(name)
            if values.null_count == len(values):
                continue
            for used_by in pc.unique(pc.filter(model, pc.is_valid(values))).to_pylist():
                mask = pc.and_(pc.is_valid(values), pc.equal(model, used_by))
                rows = np.flatnonzero(mask.to_numpy(zero_copy_only=False)) + offset
                problem = self.rows.setdefault((used_by, name), Problem(name, ""))
                problem.add(rows, len(rows))

    def problems(self, locations: dict[str, ModelLocation], refiner: ModelLocation | None) -> list[Problem]:
        """The rows a model cannot run as asked: a column its family does not use, or a refiner
        start with no (SDXL) refiner to take over."""
        found = []
        for (model, name), problem in sorted(self.rows.items()):
            family = locations[model].family
            if name == "refiner_start" and refiner is None:
                problem.reason = "needs --refiner MODEL (the SDXL model that takes over)"
            elif name == "refiner_start" and refiner.family != "sdxl":
                problem.reason = f"--refiner {refiner.name} is not an SDXL model"
            elif family not in FAMILY_COLUMNS[name]:
                users = " or ".join(FAMILY_NAMES[f] for f in FAMILY_COLUMNS[name])
                problem.reason = f"model {model} is {FAMILY_NAMES[family]}; {name} is used only by {users}"
            else:
                continue
            found.append(problem)
        return found


@dataclass
class ModelCheck:
    """The models a manifest's rows name, located (no weights read), and what is wrong."""

    locations: dict[str, ModelLocation]
    refiner: ModelLocation | None
    unusable: list[Problem]  # rows whose model (or the refiner) cannot be used, and the cause
    problems: list[Problem]  # rows asking a model for what its family does not do

    def raise_if_refused(self) -> None:
        """A model that cannot be used: ``ModelLoadError`` (its cause in one line); rows asking
        for what their model does not do: ``ManifestError``."""
        from sdbatch.manifests.problems import ManifestError
        from sdbatch.pipeline.model_files import ModelLoadError

        if self.unusable:
            raise ModelLoadError(self.unusable[0].reason)
        if self.problems:
            raise ManifestError.from_problems(self.problems)


def check_models(usage: ModelColumnUsage, refiner: str | None) -> ModelCheck:
    from sdbatch.pipeline.model_files import ModelLoadError, locate_model

    locations, unusable = {}, []
    for name, rows in sorted(usage.model_rows.items()):
        try:
            locations[name] = locate_model(name)
        except ModelLoadError as exc:
            rows.reason = str(exc)
            unusable.append(rows)
    located_refiner = None
    if refiner:
        try:
            located_refiner = locate_model(refiner)
        except ModelLoadError as exc:
            unusable.append(Problem("refiner_start", f"--refiner {exc}"))
    problems = [] if unusable else usage.problems(locations, located_refiner)
    return ModelCheck(locations, located_refiner, unusable, problems)
