"""Validation memory grows by tens of bytes a row, not by rows' worth of objects.

A smaller version of ``benchmarks/manifest_memory.py`` (which runs `sdbatch validate` on 2 million
rows): peak RSS of a validating child process (measured as the benchmark does) for 1M and for 3M
rows. Validation keeps an 8-byte hash of each row's id and sorts them (about 50 bytes a row at peak
with the reader's own growth). Holding the rows as one Arrow table (about 150 bytes a row here) or
as Python objects (hundreds) would pass 100 bytes a row.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
import manifest_memory  # noqa: E402 - the benchmark's measuring launcher

VALIDATE = """
import sys
from sdbatch.manifests.source import open_manifest
from sdbatch.manifests.validate import validate_source
report = validate_source(open_manifest(sys.argv[1]), schedulers=("ddim", "euler_a"))
assert report.rows == int(sys.argv[2]) and not report.problems, report.problems
"""


def _write(path: Path, rows: int) -> Path:
    writer = None
    for start in range(0, rows, 100_000):
        n = np.arange(start, min(start + 100_000, rows))
        table = pa.table({
            "id": pc.binary_join_element_wise("image-", pc.cast(pa.array(n), pa.string()), ""),
            "prompt": pc.binary_join_element_wise(
                "a detailed photograph of a lighthouse at dusk, variant", pc.cast(pa.array(n % 5000), pa.string()), " "),
            "seed": pa.array(n.astype(np.uint64)),
            "guidance_scale": pa.array(np.where(n % 2 == 0, 7.5, 3.0)),
            "steps": pa.array(np.full(len(n), 30)),
            "scheduler": pa.array(np.where(n % 2 == 0, "ddim", "euler_a")),
            "label": pc.cast(pa.array(n % 97), pa.string()),
        })
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def _peak_rss_mib(manifest: Path, rows: int) -> float:
    result = manifest_memory.measure([sys.executable, "-c", VALIDATE, str(manifest), str(rows)])
    assert result["exit_code"] == 0, result["output"]
    return result["peak_rss_mib"]


def test_validation_memory_grows_by_bytes_not_rows_worth_of_objects(tmp_path):
    smaller = _peak_rss_mib(_write(tmp_path / "smaller.parquet", 1_000_000), 1_000_000)
    larger = _peak_rss_mib(_write(tmp_path / "larger.parquet", 3_000_000), 3_000_000)
    growth_bytes_per_row = (larger - smaller) * 2**20 / 2_000_000
    assert growth_bytes_per_row < 100, (smaller, larger, growth_bytes_per_row)
