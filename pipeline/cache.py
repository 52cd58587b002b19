"""The sdbatch cache folder: built-in tiny models, model fingerprints, compiled kernels.

``SDBATCH_CACHE``, else ``~/.cache/sdbatch``. Each process (driver, every actor) finds it in its own
environment; on a cluster, a node-local disk is right (everything here can be rebuilt).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("SDBATCH_CACHE") or Path.home() / ".cache" / "sdbatch")
