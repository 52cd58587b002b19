"""What a manifest's rows ask of the job's adapters, checked before any work: every LoRA a row
names must resolve to a safetensors file (``adapter_files``), and in a job with embeddings every
textual-inversion token a prompt writes as ``<token>`` must be one an ``--embedding`` gives (a typo
would silently be read as letters). ``validate`` and ``run`` both refuse what does not, naming the
column and rows. In a job without embeddings such words are text (prompts hold ``<b>`` and the
like), and only noted.

``AdapterUsage`` watches the validating pass (``plan_manifest``, a batch at a time), as
``ModelColumnUsage`` does: per LoRA name and per token, the rows that use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sdbatch.jobs.worker.adapter_files import TOKEN_IN_TEXT, AdapterError, AdapterFile, EmbeddingFile, LoraFiles, resolve_embedding
from sdbatch.manifests.loras import parse_loras
from sdbatch.manifests.problems import ManifestError, Problem
from sdbatch.pipeline.prompt_syntax import a1111_problem
from sdbatch.pipeline.speed.options import lora_conflict

TEXT_COLUMNS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
_TOKEN = re.compile(TOKEN_IN_TEXT)


def _bracket_reason(text: str) -> str | None:
    """Refused a1111 brackets, in words that do not depend on the text (positions go with values)."""
    problem = a1111_problem(text)
    if problem is None:
        return None
    if "not a number" in problem:
        return "a1111 prompt: a (text:weight) weight is not a number"
    return r"a1111 prompt: unbalanced brackets (escape a literal bracket as \( \) \[ \])"


@dataclass
class AdapterUsage:
    """Rows naming each LoRA, and rows writing each ``<token>`` (per column)."""

    lora_rows: dict[str, Problem] = field(default_factory=dict)
    token_rows: dict[tuple[str, str], Problem] = field(default_factory=dict)
    bracket_rows: dict[tuple[str, str], Problem] = field(default_factory=dict)  # a1111 texts refused

    def add(self, offset: int, table: pa.Table, batch: pa.RecordBatch | None = None) -> None:
        loras = table.column("loras")
        if loras.null_count < len(loras):
            for value in pc.unique(loras).to_pylist():
                if value is None:
                    continue
                rows = np.flatnonzero(pc.fill_null(pc.equal(loras, value), False).to_numpy(zero_copy_only=False))
                try:
                    names = [name for name, _ in parse_loras(value)]
                except ValueError:  # refused by the manifest checks already
                    continue
                for name in names:
                    self.lora_rows.setdefault(name, Problem("loras", "")).add(rows + offset, len(rows), [value])
        a1111 = pc.fill_null(pc.equal(table.column("prompt_syntax"), "a1111"), False)
        for column in TEXT_COLUMNS if pc.any(a1111).as_py() else ():
            values = table.column(column)
            bracketed = pc.and_(a1111, pc.fill_null(pc.match_substring_regex(values, r"[()\[\]]"), False))
            for i in pc.indices_nonzero(bracketed).to_pylist():
                text = values[i].as_py()
                reason = _bracket_reason(text)
                if reason:
                    self.bracket_rows.setdefault((column, reason), Problem(column, reason)).add([i + offset], 1, [text])
        for column in TEXT_COLUMNS:
            values = table.column(column)
            hits = pc.fill_null(pc.match_substring_regex(values, TOKEN_IN_TEXT), False)
            if not pc.any(hits).as_py():
                continue
            for i in pc.indices_nonzero(hits).to_pylist():
                text = values[i].as_py()
                for token in dict.fromkeys(_TOKEN.findall(text)):
                    self.token_rows.setdefault((column, token), Problem(column, "")).add([i + offset], 1, [text])

    def row_problems(self) -> list[Problem]:
        """What the rows' own texts break (a1111 brackets): the manifest's problems, found here
        because reading the a1111 grammar is the engine's (``pipeline.prompt_syntax``)."""
        return list(self.bracket_rows.values())

    @property
    def lora_names(self) -> list[str]:
        return sorted(self.lora_rows)


@dataclass
class AdapterCheck:
    loras: dict[str, AdapterFile]  # every LoRA name the rows use, resolved
    embeddings: list[EmbeddingFile]
    problems: list[Problem]
    notes: list[str] = field(default_factory=list)

    def fingerprints(self) -> dict[str, str]:
        """Plan entries (next to the models'): each file's content, so a resume refuses a change."""
        found = {f"--lora {name}": f"sha256:{file.sha256}" for name, file in self.loras.items()}
        found.update({f"--embedding {e.spec}": f"sha256:{e.sha256}" for e in self.embeddings})
        return found

    def raise_if_refused(self) -> None:
        if self.problems:
            raise ManifestError.from_problems(self.problems)


def check_adapters(usage: AdapterUsage, loras: LoraFiles, embeddings: list[str],
                   quantize: str = "none") -> AdapterCheck:
    """Resolve every LoRA the rows name and every ``--embedding``; rows naming a LoRA that cannot be
    used (also: any LoRA, with ``--quantize`` other than none), or writing a ``<token>`` no
    embedding gives, are problems. An ``--embedding`` that cannot be used raises ``AdapterError``
    (the job cannot start)."""
    files = [resolve_embedding(spec) for spec in embeddings]
    tokens = {f.token for f in files}
    seen: dict[str, str] = {}
    for f in files:
        if f.token in seen:
            raise AdapterError(f"--embedding {f.spec} and --embedding {seen[f.token]} give the same token {f.token}")
        seen[f.token] = f.spec
    resolved, problems, notes = {}, [], []
    for name in usage.lora_names:
        if quantize != "none":
            problem = usage.lora_rows[name]
            problem.reason = lora_conflict(quantize)
            problems.append(problem)
            continue
        try:
            resolved[name] = loras.resolve(name)
        except AdapterError as exc:
            problem = usage.lora_rows[name]
            problem.reason = str(exc)
            problems.append(problem)
    for (column, token), problem in sorted(usage.token_rows.items()):
        if token in tokens:
            continue
        if not tokens:
            if len(notes) < 3:
                notes.append(f"column '{column}', {problem.count:,} row(s): {token} is read as text "
                             "(no --embedding gives it)")
            continue
        problem.reason = (f"unknown embedding token {token} (--embedding gives {', '.join(sorted(tokens))}; "
                          "write other text without angle brackets)")
        problems.append(problem)
    return AdapterCheck(resolved, files, problems, notes)
