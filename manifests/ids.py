"""Row ids and seeds: stable, path-safe and derived deterministically when not given."""

from __future__ import annotations

import hashlib
import json
import re

MAX_KEY_LENGTH = 120
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(row_id: str) -> str:
    """A file / object-key safe name for ``row_id``: no separators, no ``..``, bounded length.

    Distinct ids that clean to the same text get a short hash suffix, so they never collide.
    """
    cleaned = _UNSAFE.sub("_", row_id).strip("._") or "row"
    cleaned = cleaned.replace("..", "_")
    if cleaned == row_id and len(cleaned) <= MAX_KEY_LENGTH:
        return cleaned
    digest = hashlib.sha256(row_id.encode()).hexdigest()[:12]
    return f"{cleaned[: MAX_KEY_LENGTH - 13]}-{digest}"


def derive_id(params: dict) -> str:
    """An id from a row's generation parameters and model: same row, same id."""
    blob = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return "r" + hashlib.sha256(blob.encode()).hexdigest()[:24]


def derive_seed(row_id: str) -> int:
    """A seed in 0..2**64-1 from the row id."""
    return int.from_bytes(hashlib.sha256(b"sdbatch-seed:" + row_id.encode()).digest()[:8], "big")
