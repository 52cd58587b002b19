"""The ``loras`` column's grammar, its normal form, and AUTOMATIC1111's ``<lora:name:weight>`` tags.

A row's LoRAs are written ``name:weight[,name:weight...]``: each entry's weight follows its last
colon (so a name may itself hold colons, as ``s3://bucket/style.safetensors:0.8`` does) and must be a
finite number; a name is given once. In an ``a1111`` row, ``<lora:name>`` (weight 1) and
``<lora:name:weight>`` tags in the prompt mean the same and are moved there: out of the prompt
text (as AUTOMATIC1111 removes them before encoding) into the row's LoRAs.

The normal form, used for batching, ids and metadata, lists the entries sorted by name with each
weight as its shortest exact decimal (``style:0.5,detail:1`` -> ``detail:1,style:0.5``); a row
without LoRAs has none (null).
"""

from __future__ import annotations

import math
import re

# AUTOMATIC1111's extra-network tag (modules/extra_networks.py re_extra_net)
EXTRA_NETWORK_TAG = re.compile(r"<(\w+):([^>]+)>")
LORA_TAG_NAMES = ("lora",)


class LoraSyntaxError(ValueError):
    """A ``loras`` value or ``<lora:...>`` tag that cannot be read; the message says why (without
    the value, which the caller shows)."""


def weight_text(weight: float) -> str:
    """The shortest decimal that reads back as ``weight``, without a trailing ``.0``."""
    text = repr(float(weight))
    return text[:-2] if text.endswith(".0") else text


def _weight(text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise LoraSyntaxError("a LoRA weight is not a number (write name:weight, e.g. style:0.8)") from None
    if not math.isfinite(weight):
        raise LoraSyntaxError("a LoRA weight is not a finite number")
    return weight


def parse_loras(value: str | None) -> list[tuple[str, float]]:
    """``name:weight[,name:weight...]`` -> [(name, weight)], in the order given."""
    if value is None or not value.strip():
        return []
    entries = []
    for entry in value.split(","):
        if not entry.strip():
            raise LoraSyntaxError("an empty entry (two commas, or one at an end)")
        name, sep, weight = entry.rpartition(":")
        if not sep:
            raise LoraSyntaxError("a LoRA without a weight (write name:weight, e.g. style:0.8)")
        if not name.strip():
            raise LoraSyntaxError("a weight without a LoRA name (write name:weight)")
        entries.append((name.strip(), _weight(weight)))
    return entries


def normal_form(entries: list[tuple[str, float]]) -> str | None:
    """The normal form of ``entries`` (None for none); a name given twice is refused."""
    seen: set[str] = set()
    for name, _ in entries:
        if name in seen:
            raise LoraSyntaxError(f"a LoRA given twice ({name})")
        seen.add(name)
    if not entries:
        return None
    return ",".join(f"{name}:{weight_text(weight)}" for name, weight in sorted(entries))


def prompt_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """The prompt without its ``<lora:...>`` tags, and the tags' LoRAs. Other extra-network tags
    (``<hypernet:...>``, ``<lyco:...>``) are refused: sdbatch does not load them."""
    entries: list[tuple[str, float]] = []
    for match in EXTRA_NETWORK_TAG.finditer(prompt):
        kind, args = match.group(1), match.group(2)
        if kind not in LORA_TAG_NAMES:
            raise LoraSyntaxError(f"<{kind}:...> tags are not supported (sdbatch reads <lora:name:weight>)")
        parts = args.split(":")
        if len(parts) > 2 or not parts[0].strip():
            raise LoraSyntaxError("write <lora:name> or <lora:name:weight> (separate text-encoder and UNet "
                                  "weights are not supported)")
        entries.append((parts[0].strip(), _weight(parts[1]) if len(parts) == 2 else 1.0))
    if not entries:
        return prompt, []
    return EXTRA_NETWORK_TAG.sub("", prompt), entries


def has_tags(text: str | None) -> bool:
    return bool(text) and EXTRA_NETWORK_TAG.search(text) is not None


def row_loras(loras: str | None, prompt: str, a1111: bool) -> tuple[str, str | None]:
    """(the prompt, the row's LoRAs in normal form): ``a1111`` rows' prompt tags moved into them."""
    entries = parse_loras(loras)
    if a1111:
        prompt, tagged = prompt_tags(prompt)
        entries += tagged
    return prompt, normal_form(entries)
