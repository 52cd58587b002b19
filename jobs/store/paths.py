"""Every path in the output folder OUT, named once: the layout of OUT that the store's modules
(``outdir``, ``layouts``, ``lease``) and readers share. No other module spells a path in OUT.

::

    OUT/_job/plan.json                  what decides the outputs (resume compares it)
    OUT/_job/inputs/<shard>.parquet     the shard's manifest rows, normalised (written at planning)
    OUT/_job/shards/<shard>.json        the shard's commit marker (its stats)
    OUT/_job/summary.json               the last run's summary
    OUT/_job/lease.json                 the running driver's lease (see lease.py)
    OUT/_job/logs/<time>.log            the traceback of a run that failed unexpectedly
    OUT/_job/pending/<shard>/           a local shard's images until it commits
    OUT/_job/tmp/                       local writes in progress (renamed into place when whole)
    OUT/metadata/<shard>.parquet        one metadata row per manifest row of the shard
    OUT/images/<shard>/...              files layout (see layouts.py)
    OUT/shards/<shard>.tar              webdataset layout
"""

from __future__ import annotations

JOB = "_job"
PLAN = f"{JOB}/plan.json"
SUMMARY = f"{JOB}/summary.json"
LEASE = f"{JOB}/lease.json"
LOGS = f"{JOB}/logs"
INPUTS = f"{JOB}/inputs"
MARKERS = f"{JOB}/shards"
PENDING = f"{JOB}/pending"
TMP = f"{JOB}/tmp"  # local writes in progress (storage.LocalStorage)
METADATA = "metadata"
IMAGES = "images"
TARS = "shards"
# What a job writes (a new job clears them; _job/tmp holds this run's own staging, and stays).
OUTPUT_PREFIXES = (IMAGES, TARS, METADATA, INPUTS, MARKERS, PENDING)
OUTPUT_FILES = (PLAN, SUMMARY)


def inputs_path(shard: str) -> str:
    return f"{INPUTS}/{shard}.parquet"


def marker_path(shard: str) -> str:
    return f"{MARKERS}/{shard}.json"


def metadata_path(shard: str) -> str:
    return f"{METADATA}/{shard}.parquet"


def image_folder(shard: str) -> str:
    return f"{IMAGES}/{shard}"


def pending_folder(shard: str) -> str:
    return f"{PENDING}/{shard}"


def tar_path(shard: str) -> str:
    return f"{TARS}/{shard}.tar"


def shard_name(number: int) -> str:
    return f"{number:05d}"
