"""Manifest checks: column types against the schema, then vectorised value checks per batch.

Every check is an Arrow compute expression over a whole record batch; only the few offending
rows and values are turned into Python objects, for the message.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


from .loras import LoraSyntaxError, has_tags, normal_form, parse_loras, prompt_tags
from .problems import ProblemLog
from .schema import (
    CLIP_SKIP_RANGE,
    COLUMN_NAMES,
    COLUMNS,
    DEFAULT_MODE,
    DEFAULT_PROMPT_SYNTAX,
    FLOAT,
    CONDITIONING_SIZE_RANGE,
    GUIDANCE_RANGE,
    GUIDANCE_RESCALE_RANGE,
    ID,
    IMAGE,
    INT,
    KIND_DESCRIPTIONS,
    MODE_IMAGES,
    MODES,
    MODES_WITHOUT_PROMPT,
    PROMPT_SYNTAXES,
    SEED,
    SIZE_MULTIPLE,
    SIZE_RANGE,
    STEPS_RANGE,
    STRING,
)


def _is_string(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return _is_string(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t))


_ACCEPTS = {
    STRING: _is_string,
    ID: lambda t: _is_string(t) or pa.types.is_integer(t),
    INT: pa.types.is_integer,
    SEED: pa.types.is_integer,
    FLOAT: lambda t: pa.types.is_integer(t) or pa.types.is_floating(t),
    IMAGE: lambda t: _is_string(t) or _is_binary(t),
}


def type_accepted(kind: str, t: pa.DataType) -> bool:
    return pa.types.is_null(t) or _ACCEPTS[kind](t)


def check_types(schema: pa.Schema, problems: ProblemLog) -> None:
    """Columns of a type sdbatch cannot read (whole-column problems)."""
    for column in COLUMNS:
        if column.name in schema.names:
            t = schema.field(column.name).type
            if not type_accepted(column.kind, t):
                problems.add(column.name, f"wrong type {t}, expected {KIND_DESCRIPTIONS[column.kind]}")


# -- column names: likely typos and other tools' names ------------------------------------------

LABEL_PREFIX = "label_"
LABELS_COLUMN = "labels"

# Other tools' names for sdbatch's columns (diffusers' pipeline arguments, AUTOMATIC1111's API and
# infotext, ComfyUI's KSampler, InvokeAI, the CompVis scripts). Refused with the name to use, not
# accepted as aliases: one spelling per concept, so a manifest means the same to every reader.
OTHER_TOOLS_NAMES: dict[str, str] = {
    **dict.fromkeys(("num_inference_steps", "inference_steps", "num_steps", "n_steps", "sampling_steps",
                     "ddim_steps", "sample_steps"), "steps"),
    **dict.fromkeys(("cfg", "cfg_scale", "guidance", "scale", "cfg_guidance", "text_cfg_scale"),
                    "guidance_scale"),
    **dict.fromkeys(("sampler", "sampler_name", "sampler_index", "sampling_method", "schedule_type",
                     "noise_scheduler"), "scheduler"),
    **dict.fromkeys(("negative", "neg", "neg_prompt", "negative_text", "negative_prompts"), "negative_prompt"),
    **dict.fromkeys(("positive", "positive_prompt", "pos_prompt"), "prompt"),
    **dict.fromkeys(("denoising_strength", "denoise", "denoising", "noise_strength", "img2img_strength"),
                    "strength"),
    **dict.fromkeys(("image", "init_images", "init_img", "input_image", "source_image"), "init_image"),
    **dict.fromkeys(("mask", "inpaint_mask", "mask_img"), "mask_image"),
    **dict.fromkeys(("depth", "depth_image"), "depth_map"),
    **dict.fromkeys(("noise_seed", "manual_seed"), "seed"),
    **dict.fromkeys(("ckpt", "ckpt_name", "checkpoint", "model_name", "model_id", "sd_model_checkpoint",
                     "pretrained_model_name_or_path"), "model"),
}
# Other tools' columns with no one column to use instead: refused with what to do.
OTHER_TOOLS_HINTS: dict[str, str] = {
    **dict.fromkeys(("size", "resolution"), _SIZE_HINT := "use 'width' and 'height'"),
    **dict.fromkeys(("num_images_per_prompt", "n_iter", "batch_count", "n_samples", "num_images"),
                    "one row is one image: give each image its own row (sdbatch sweep --seeds 0-3 does)"),
    "batch_size": "the batch size is a run option (--batch-size), not a column",
}
_MAX_COMPARED_CHARS = 40


def _squash(name: str) -> str:
    """A name without case and word separators: ``Guidance-Scale`` and ``guidanceScale`` alike."""
    return "".join(ch for ch in name.lower() if ch not in " _-.")


_SQUASHED_KNOWN = {_squash(n): n for n in COLUMN_NAMES if len(n) > 3}
_SQUASHED_OTHER = {_squash(n): target for n, target in OTHER_TOOLS_NAMES.items()}
_SQUASHED_HINTS = {_squash(n): hint for n, hint in OTHER_TOOLS_HINTS.items()}


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance with adjacent transpositions counted as one edit (``promtp``)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                current[j] = min(current[j], previous2[j - 2] + 1)
        previous2, previous = previous, current
    return previous[-1]


def is_label(name: str, labels: Sequence[str] = ()) -> bool:
    """Declared a label: named by ``--label``, prefixed ``label_``, or the ``labels`` struct column."""
    lowered = name.lower()
    return name in labels or lowered == LABELS_COLUMN or lowered.startswith(LABEL_PREFIX)


def likely_meant(name: str) -> str | None:
    """The manifest column ``name`` (not itself one) most likely stands for, or None: another
    tool's name for it, the same name in other case or separators, a prefix of it (``guidance``),
    or a typo (one edit for names up to 6 letters, keeping the first; two for longer names)."""
    if name in COLUMN_NAMES or len(name) > _MAX_COMPARED_CHARS:
        return None
    squashed = _squash(name)
    if squashed in _SQUASHED_OTHER:
        return _SQUASHED_OTHER[squashed]
    if name.lower() in COLUMN_NAMES:  # ID, Id: short names match only in another case
        return name.lower()
    if squashed in _SQUASHED_KNOWN:
        return _SQUASHED_KNOWN[squashed]
    if len(squashed) >= 4:
        for known_squashed, known in _SQUASHED_KNOWN.items():
            if known_squashed.startswith(squashed):
                return known
    best: tuple[int, str] | None = None
    for known_squashed, known in _SQUASHED_KNOWN.items():
        limit = 1 if len(known_squashed) <= 6 else 2
        if limit == 1 and squashed[:1] != known_squashed[:1]:
            continue
        if known_squashed[-1:].isdigit() and squashed[-1:] != known_squashed[-1:]:
            continue  # prompt_id is no typo of prompt_2: a numbered column keeps its number
        distance = _edit_distance(squashed, known_squashed)
        if distance <= limit and (best is None or distance < best[0]):
            best = (distance, known)
    return best[1] if best else None


def check_column_names(names: Sequence[str], labels: Sequence[str], problems: ProblemLog) -> list[str]:
    """Columns that look like a misspelt manifest column or another tool's name for one are refused
    (a silently ignored ``guidance`` would run every row at the default), unless declared labels or
    the column they stand for is there too (then nothing runs at a default it did not mean).
    Returns notes: ``labels`` naming no column."""
    present = set(names)
    for name in names:
        if name in COLUMN_NAMES:
            if name in labels:
                problems.add(name, "declared a label (--label), but it is a manifest column; rename the "
                                   f"column (e.g. {LABEL_PREFIX}{name}) to carry it as a label")
            continue
        if is_label(name, labels):
            continue
        hint = _SQUASHED_HINTS.get(_squash(name)) if len(name) <= _MAX_COMPARED_CHARS else None
        if hint == _SIZE_HINT and present & {"width", "height"}:
            continue
        meant = likely_meant(name) if hint is None else None
        if hint is None and (meant is None or meant in present):
            continue
        advice = hint or f"did you mean '{meant}'?"
        problems.add(name, f"not a manifest column; {advice} (if it is a label: rename it "
                           f"{LABEL_PREFIX}{name} or pass --label {_quoted(name)})")
    return [f"--label {_quoted(label)}: no such column in the manifest" for label in labels if label not in present]


def _quoted(name: str) -> str:
    """A column name as one shell word (for a ``--label`` the user can paste)."""
    if name and all(ch.isalnum() or ch in "_-." for ch in name):
        return name
    return "'" + name.replace("'", "'\\''") + "'"


def check_schema(schema: pa.Schema, problems: ProblemLog) -> None:
    """Missing required columns, then column types."""
    for column in COLUMNS:
        if column.required and column.name not in schema.names:
            problems.add(column.name, "missing (required column)")
    check_types(schema, problems)


class BatchChecker:
    """Value checks for one record batch whose first row is manifest row ``offset``."""

    def __init__(self, batch: pa.RecordBatch, offset: int, problems: ProblemLog,
                 schedulers: Sequence[str], prompt_syntax: str = DEFAULT_PROMPT_SYNTAX):
        self.batch = batch
        self.offset = offset
        self.problems = problems
        self.schedulers = schedulers
        self.modes = self._modes()
        self.syntaxes = self._syntaxes(prompt_syntax)

    def _column(self, name: str) -> pa.Array | None:
        if name not in self.batch.schema.names:
            return None
        return self.batch.column(name)

    def _modes(self) -> pa.Array:
        mode = self._column("mode")
        if mode is None:
            return pa.array([DEFAULT_MODE] * self.batch.num_rows, pa.string())
        return pc.fill_null(pc.cast(mode, pa.string()), DEFAULT_MODE)

    def _syntaxes(self, default: str) -> pa.Array:
        """Each row's prompt syntax: its own, else the job's."""
        syntax = self._column("prompt_syntax")
        if syntax is None:
            return pa.array([default] * self.batch.num_rows, pa.string())
        return pc.fill_null(pc.cast(syntax, pa.string()), default)

    def _report(self, name: str, bad: pa.Array, reason: str, values: pa.Array | None = None) -> None:
        """Record the rows where ``bad`` is true (null counts as fine)."""
        bad = pc.fill_null(bad, False)
        count = pc.sum(bad).as_py() or 0
        if not count:
            return
        rows = np.flatnonzero(bad.to_numpy(zero_copy_only=False)) + self.offset
        shown = pc.filter(values, bad).slice(0, 20).to_pylist() if values is not None else ()
        self.problems.add(name, reason, rows=rows[:10], count=count, values=shown)

    # -- checks ---------------------------------------------------------------------------------
    def run(self) -> None:
        self.check_mode()
        self.check_prompt()
        self.check_seed()
        self.check_range("guidance_scale", *GUIDANCE_RANGE, finite=True)
        self.check_range("steps", *STEPS_RANGE)
        for name in ("width", "height"):
            self.check_size(name)
        self.check_names("scheduler", self.schedulers, "unknown scheduler")
        self.check_strength()
        self.check_images()
        self.check_id()
        self.check_range("guidance_rescale", *GUIDANCE_RESCALE_RANGE, finite=True)
        for name in ("original_width", "original_height", "crop_top", "crop_left"):
            self.check_range(name, *CONDITIONING_SIZE_RANGE)
        self.check_open_fraction("refiner_start")
        self.check_names("prompt_syntax", PROMPT_SYNTAXES, "unknown prompt syntax")
        self.check_range("clip_skip", *CLIP_SKIP_RANGE)
        self.check_loras()
        self.check_a1111_texts()
        self.check_compel_clip_skip()

    def _texts(self, name: str) -> pa.Array | None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return None
        return pc.cast(values, pa.string())

    def _report_values(self, name: str, values: pa.Array, candidates: pa.Array, reason_of) -> None:
        """Rows where ``candidates`` holds and ``reason_of(value)`` gives a reason, by reason
        (each distinct value judged once)."""
        reasons: dict[str, list] = {}
        for value in pc.unique(pc.filter(values, pc.fill_null(candidates, False))).to_pylist():
            reason = reason_of(value) if value is not None else None
            if reason:
                reasons.setdefault(reason, []).append(value)
        for reason, bad_values in reasons.items():
            bad = pc.and_(candidates, pc.is_in(values, value_set=pa.array(bad_values, pa.string())))
            self._report(name, bad, reason, values)

    def check_loras(self) -> None:
        """The loras column's grammar, and in a1111 prompts the <lora:...> tags (whose LoRAs must not
        repeat the column's)."""
        loras, prompt = self._texts("loras"), self._texts("prompt")
        a1111 = pc.equal(self.syntaxes, "a1111")
        if loras is not None:
            given = pc.not_equal(pc.utf8_trim_whitespace(loras), "")
            self._report_values("loras", loras, given, lambda v: _lora_reason(lambda: normal_form(parse_loras(v))))
        if prompt is None:
            return
        tagged = pc.and_(a1111, pc.match_substring(prompt, "<"))
        self._report_values("prompt", prompt, tagged, lambda v: _lora_reason(lambda: normal_form(prompt_tags(v)[1])))
        both = pc.fill_null(pc.and_(tagged, given), False) if loras is not None else None
        if both is None or not pc.any(both).as_py():
            return
        for i in pc.indices_nonzero(both).to_pylist():
            value, text = loras[i].as_py(), prompt[i].as_py()
            if _lora_reason(lambda: parse_loras(value)) or _lora_reason(lambda: prompt_tags(text)):
                continue  # reported above
            reason = _lora_reason(lambda: normal_form(parse_loras(value) + prompt_tags(text)[1]))
            if reason:
                self.problems.add("loras", f"{reason}: in the column and in a <lora:...> tag of the prompt",
                                  rows=[i + self.offset], count=1, values=[value])

    def check_a1111_texts(self) -> None:
        """<lora:...> tags only in prompts (their brackets are checked by the job layer, which reads
        the a1111 grammar: ``jobs.adapter_checks``)."""
        a1111 = pc.equal(self.syntaxes, "a1111")
        if not pc.any(a1111).as_py():
            return
        for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2"):
            values = self._texts(name)
            if values is None:
                continue
            if name != "prompt":
                self._report_values(name, values, a1111, lambda v: (
                    "<lora:...> tags go in the prompt (or the loras column)" if has_tags(v) else None))

    def check_compel_clip_skip(self) -> None:
        clip_skip = self._column("clip_skip")
        if clip_skip is None or pa.types.is_null(clip_skip.type):
            return
        bad = pc.and_(pc.equal(self.syntaxes, "compel"), pc.is_valid(clip_skip))
        self._report("clip_skip", bad, "not available with prompt_syntax compel (compel has no clip skip)", clip_skip)

    def check_open_fraction(self, name: str) -> None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return
        inside = pc.and_(pc.greater(values, 0), pc.less(values, 1))
        self._report(name, pc.invert(inside), "must be a fraction in (0, 1)", values)

    def check_mode(self) -> None:
        self.check_names("mode", MODES, "unknown mode")

    def check_names(self, name: str, known: Sequence[str], reason: str) -> None:
        values = self._column(name)
        if values is None:
            return
        values = pc.cast(values, pa.string())
        bad = pc.invert(pc.is_in(values, value_set=pa.array(list(known), pa.string())))
        self._report(name, pc.and_(bad, pc.is_valid(values)), f"{reason}; known: {', '.join(known)}", values)

    def check_prompt(self) -> None:
        prompt = self._column("prompt")
        if prompt is None:
            return
        prompt = pc.cast(prompt, pa.string())
        empty = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(prompt), ""), True)
        needs = pc.is_in(self.modes, value_set=pa.array([m for m in MODES if m not in MODES_WITHOUT_PROMPT]))
        for mode in pc.unique(pc.filter(self.modes, pc.and_(empty, needs))).to_pylist():
            in_mode = pc.and_(empty, pc.equal(self.modes, mode))
            self._report("prompt", in_mode, f"empty, mode {mode} needs a prompt")

    def check_seed(self) -> None:
        seed = self._column("seed")
        if seed is None or not pa.types.is_signed_integer(seed.type):
            return
        self._report("seed", pc.less(seed, 0), "must be between 0 and 2**64-1", seed)

    def check_range(self, name: str, low: float, high: float, finite: bool = False) -> None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return
        numbers = _float64(values)
        inside = pc.and_(pc.greater_equal(numbers, low), pc.less_equal(numbers, high))
        what = "a finite number " if finite else ""
        self._report(name, pc.invert(inside), f"must be {what}between {low:g} and {high:g}", values)

    def check_size(self, name: str) -> None:
        values = self._column(name)
        if values is None or pa.types.is_null(values.type):
            return
        low, high = SIZE_RANGE
        numbers = _float64(values)
        inside = pc.and_(pc.greater_equal(numbers, low), pc.less_equal(numbers, high))
        self._report(name, pc.invert(inside), f"must be between {low} and {high}", values)
        low_bits = pc.bit_wise_and(values, pa.scalar(SIZE_MULTIPLE - 1, values.type))
        off_grid = pc.not_equal(low_bits, pa.scalar(0, values.type))
        self._report(name, pc.and_(inside, off_grid), f"must be a multiple of {SIZE_MULTIPLE}", values)

    def check_strength(self) -> None:
        values = self._column("strength")
        if values is None or pa.types.is_null(values.type):
            return
        numbers = _float64(values)
        inside = pc.and_(pc.greater(numbers, 0), pc.less_equal(numbers, 1))
        self._report("strength", pc.invert(inside), "must be in (0, 1]", values)

    def check_images(self) -> None:
        for mode, needed in MODE_IMAGES.items():
            in_mode = pc.equal(self.modes, mode)
            if not needed or not pc.any(in_mode).as_py():
                continue
            for name in needed:
                values = self._column(name)
                if values is None:
                    self._report(name, in_mode, f"missing, mode {mode} needs it")
                    continue
                empty = pc.fill_null(pc.equal(pc.binary_length(_plain(values)), 0), True)
                self._report(name, pc.and_(in_mode, empty), f"empty, mode {mode} needs an image")

    def check_id(self) -> None:
        values = self._column("id")
        if values is None or not _is_string(values.type):
            return
        empty = pc.equal(pc.binary_length(pc.cast(values, pa.string())), 0)
        self._report("id", empty, "empty id (leave it null to derive one)")


def _float64(values: pa.Array) -> pa.Array:
    """Any integer or float column as float64, for range comparisons that no value can overflow:
    integers past 2**53 round, but every bound is far below that (uint64 against an int64 bound, or
    float16, has no Arrow comparison kernel of its own)."""
    return pc.cast(values, pa.float64(), safe=False)


def _plain(values: pa.Array) -> pa.Array:
    """Dictionary and view columns as plain string/binary, for length kernels."""
    t = values.type
    if pa.types.is_dictionary(t):
        return _plain(pc.cast(values, t.value_type))
    if pa.types.is_string_view(t) or pa.types.is_null(t):
        return pc.cast(values, pa.string())
    if pa.types.is_binary_view(t) or pa.types.is_fixed_size_binary(t):
        return pc.cast(values, pa.binary())
    return values


def _lora_reason(read) -> str | None:
    try:
        read()
    except LoraSyntaxError as exc:
        return str(exc)
    return None


def check_batch(batch: pa.RecordBatch, offset: int, problems: ProblemLog, schedulers: Sequence[str],
                prompt_syntax: str = DEFAULT_PROMPT_SYNTAX) -> None:
    """``prompt_syntax``: the job's, for rows that name none."""
    BatchChecker(batch, offset, problems, schedulers, prompt_syntax).run()
