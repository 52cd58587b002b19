"""Shared fixtures: tiny models written once per session through the real `sdbatch tiny-model` path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One torch thread per test process (subprocesses inherit it): the tiny model gains nothing from
# more, and on a shared 2-core machine competing OpenMP threads run several times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sdbatch.pipeline.tiny import write_tiny_model


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("models")
    return {v: str(write_tiny_model(root / v, v, seed=0)) for v in ("base", "inpaint", "depth")}


@pytest.fixture(scope="session")
def tiny_base(tiny_models) -> str:
    return tiny_models["base"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SDBATCH_CACHE", str(tmp_path_factory.getbasetemp() / "sdbatch-cache"))


def write_manifest(path: Path, columns: dict) -> Path:
    pq.write_table(pa.table(columns), path)
    return path
