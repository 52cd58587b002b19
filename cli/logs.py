"""What a user sees on the terminal: sdbatch's own lines (INFO and up), and third-party libraries'
warnings only with ``-v`` (their debug output only with ``-vv``)."""

from __future__ import annotations

import logging
import os
import sys

THIRD_PARTY = ("ray", "transformers", "diffusers", "huggingface_hub", "torch", "urllib3", "botocore", "boto3",
               "s3transfer", "filelock", "py.warnings", "PIL", "datasets", "fsspec", "httpx", "httpcore")
CREDENTIAL_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


class _Lines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        clock = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        source = "" if record.name.startswith("sdbatch") else f"[{record.name}] "
        return f"{clock} {level}{source}{record.getMessage()}"


def configure(verbose: int) -> None:
    """Set up logging for one command run (in-process calls, e.g. tests, reconfigure each time)."""
    sdbatch = logging.getLogger("sdbatch")
    for handler in list(sdbatch.handlers):
        sdbatch.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Lines())
    sdbatch.addHandler(handler)
    sdbatch.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    sdbatch.propagate = False
    logging.captureWarnings(True)
    third_party = {0: logging.ERROR, 1: logging.WARNING}.get(verbose, logging.DEBUG)
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(handler)
    for name in THIRD_PARTY:
        level = third_party
        if name in CREDENTIAL_LOGGERS:  # their debug output carries request headers: signatures, key ids
            level = max(level, logging.INFO)
        logging.getLogger(name).setLevel(level)
    if verbose == 0:
        # transformers warns about optional packages as it is imported, before its logger is set
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
