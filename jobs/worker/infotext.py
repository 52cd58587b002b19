"""The ``parameters`` text other Stable Diffusion tools write into images and read back (the
AUTOMATIC1111 "infotext"), so an image opened anywhere tells how it was made::

    a red fox
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 512x512, Model: ..., Version: sdbatch 0.1.0

The last line is ``key: value`` pairs; a value with a comma, colon or newline is JSON-quoted, as
those tools quote it. The negative prompt line is left out when there is none. A row's LoRAs are
written as AUTOMATIC1111 writes them: ``<lora:name:weight>`` tags after the prompt and a ``Lora
hashes`` field (here the first 12 hex digits of each file's SHA-256); ``clip_skip`` as its ``Clip
skip``, which counts the last layer as 1 (diffusers' ``clip_skip`` + 1).

Tools split this text at newlines (the last line is the settings, a line starting "Negative
prompt:" the negative prompt) and C readers stop at NUL, so control characters (NUL, newlines,
other C0/C1 controls, Unicode line and paragraph separators) in the prompts become spaces here:
the text always has the lines above and nothing else. The metadata keeps the exact prompts.
"""

from __future__ import annotations

import json
import unicodedata

from sdbatch.jobs.store.metadata import ResultRecord
from sdbatch.manifests.loras import parse_loras, weight_text
from sdbatch.manifests.schema import DEFAULT_PROMPT_SYNTAX, IMAGE_MODES

# Our scheduler names -> the sampler names those tools use (diffusers documents the same mapping).
SAMPLER_NAMES = {
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lms": "LMS",
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
    "unipc": "UniPC",
}


_BREAKING = ("Cc", "Zl", "Zp")  # control characters, line and paragraph separators


def one_line(text: str) -> str:
    """``text`` with every control character and line or paragraph separator as a space."""
    return "".join(" " if unicodedata.category(ch) in _BREAKING else ch for ch in text)


def quote(value) -> str:
    text = str(value)
    if any(ch in text for ch in ",:") or one_line(text) != text:
        quoted = json.dumps(text, ensure_ascii=False)  # escapes C0 controls; the rest escaped here
        return "".join(f"\\u{ord(ch):04x}" if unicodedata.category(ch) in _BREAKING else ch for ch in quoted)
    return text


def _number(value: float) -> str:
    return f"{value:g}"


def infotext(record: ResultRecord) -> str:
    """The ``parameters`` text for an ok row (its settings as actually used)."""
    fields: list[tuple[str, object]] = [
        ("Steps", record.steps),
        ("Sampler", SAMPLER_NAMES.get(record.scheduler or "", record.scheduler)),
        ("CFG scale", _number(record.guidance_scale)),
        ("Seed", record.seed),
        ("Size", f"{record.width}x{record.height}"),
        ("Model", record.model),
        ("Model revision", record.model_revision),
    ]
    if record.mode in IMAGE_MODES:
        fields += [("Denoising strength", _number(record.strength)), ("Mode", record.mode)]
    if record.guidance_rescale:
        fields.append(("CFG rescale", _number(record.guidance_rescale)))
    if record.refiner:
        fields += [("Refiner", record.refiner), ("Refiner switch at", _number(record.refiner_start))]
    if record.clip_skip is not None:
        fields.append(("Clip skip", record.clip_skip + 1))
    if record.prompt_syntax != DEFAULT_PROMPT_SYNTAX:
        fields.append(("Prompt syntax", record.prompt_syntax))
    files = record.trace.lora_files or ()
    if files:
        fields.append(("Lora hashes", ", ".join(f"{f['name']}: {f['sha256'][:12]}" for f in files)))
    if record.sdbatch_version:
        fields.append(("Version", f"sdbatch {record.sdbatch_version}"))
    settings = ", ".join(f"{key}: {quote(value)}" for key, value in fields if value is not None)
    tags = "".join(f" <lora:{name}:{weight_text(weight)}>" for name, weight in parse_loras(record.loras))
    lines = [one_line(record.prompt) + tags]
    if record.negative_prompt:
        lines.append(f"Negative prompt: {one_line(record.negative_prompt)}")
    lines.append(settings)
    return "\n".join(lines)
